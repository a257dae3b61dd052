//! Shared by the configuration tests: the repository, fixture listing, and the check of
//! invalid fixtures against their `# expect: LINE:COL: message` header lines.

use std::path::{Path, PathBuf};

use ha_lb::config;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The files in `dir` whose name ends in `.EXT`, sorted.
pub fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    files.sort();
    files
}

/// The `# expect: L:C: message` lines at the top of a fixture (`#` is a comment in TOML and
/// in keepalived.conf); `{dir}` stands for the fixture's directory.
fn expectations(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let dir = path.parent().unwrap().display().to_string();
    text.lines()
        .map_while(|l| l.strip_prefix("# expect: "))
        .map(|e| format!("{}:{}", path.display(), e.replace("{dir}", &dir)))
        .collect()
}

/// Every fixture, loaded with `config::load`, reports exactly its expected errors.
pub fn check_invalid_fixtures(files: &[PathBuf]) {
    let mut failures = Vec::new();
    for f in files {
        let want = expectations(f);
        assert!(!want.is_empty(), "{} has no '# expect: ' line", f.display());
        let got: Vec<String> = match config::load(f) {
            Ok(_) => vec!["(loaded without errors)".to_string()],
            Err(e) => e.iter().map(|e| e.to_string()).collect(),
        };
        if got != want {
            failures.push(format!(
                "{}\n  want: {}\n  got:  {}",
                f.display(),
                want.join("\n        "),
                got.join("\n        ")
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
