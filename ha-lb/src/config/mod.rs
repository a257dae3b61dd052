//! Configuration: the one model, its TOML front-end, validation with file:line errors.
