//! The keepalived.conf front-end: keepalived's own syntax, read into the same model with
//! the same errors as the TOML front-end.
//!
//! How: the file (and its `include`s) is tokenized and parsed into blocks, then *lowered*
//! to the native TOML layout — keepalived's keywords are the TOML keys, so each statement
//! becomes one `key = value` line — and that text is read by [`super::toml`]'s reader and
//! checked by `validate`, exactly as a `.toml` file. So every default, inherited value,
//! range check and cross-item rule is the TOML front-end's; nothing is written twice.
//! Each line of the lowered text remembers where its pieces came from (file, line,
//! column), and every error is reported at the keepalived source position.
//!
//! This front-end's own checks are only the ones TOML's syntax would make: the block
//! structure, value shapes (a number where a number belongs), keywords that ha-lb does not
//! know or does not support (each an error, never ignored), and keywords set twice.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::error::{ConfigError, ConfigErrors};
use super::model::Config;
use super::to_toml::toml_str;
use super::toml as native;
use super::validate;
use super::{Host, Loaded};

/// Read and validate a keepalived.conf file (with its includes).
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    load_with(path, None).map(|l| l.config)
}

pub(crate) fn load_with(path: &Path, host: Option<&Host>) -> Result<Loaded, ConfigErrors> {
    let text = read_conf(path).map_err(|e| ConfigErrors::single(path, e))?;
    parse_opts(&text, path, host, None)
}

/// Parse and validate keepalived.conf text; `origin` names the file in error messages and
/// is the base for relative `include`s.
pub fn parse_str(text: &str, origin: &Path) -> Result<Config, ConfigErrors> {
    parse_opts(text, origin, None, None).map(|l| l.config)
}

/// [`parse_str`], keeping the warnings.
pub fn parse_str_with_warnings(text: &str, origin: &Path) -> Result<Loaded, ConfigErrors> {
    parse_opts(text, origin, None, None)
}

/// [`load`] for `ha-lb convert --drop-unsupported`: keepalived keywords for features ha-lb
/// does not have and that do not decide which node holds a VIP or where a connection goes
/// ([`DROPPABLE`]: e-mail alerts, SNMP/D-Bus, FIFOs, strict mode's firewall rules, process
/// tuning) are left out instead of refused; returns the configuration and, as
/// `file:line:col` items, what was left out. Everything else is as strict as [`load`].
pub fn load_dropping_unsupported(path: &Path) -> Result<(Loaded, Vec<ConfigError>), ConfigErrors> {
    let text = read_conf(path).map_err(|e| ConfigErrors::single(path, e))?;
    let mut dropped = Vec::new();
    let loaded = parse_opts(&text, path, None, Some(&mut dropped))?;
    let c = &loaded.config;
    // keepalived's strict mode changes other settings (it ignores authentication and
    // preempt_delay, refuses unicast peers): without it this file would elect differently
    // from the keepalived it replaces (a peer still on keepalived would drop our adverts).
    if let Some(strict) = dropped.iter().find(|d| d.message.starts_with("vrrp_strict ")) {
        let changed: Vec<String> = c
            .vrrp_instances
            .iter()
            .flat_map(|i| {
                [
                    (i.authentication.is_some(), "authentication"),
                    (!i.preempt_delay.is_zero(), "preempt_delay"),
                    (!i.unicast_peer.is_empty(), "unicast_peer"),
                ]
                .into_iter()
                .filter(|(on, _)| *on)
                .map(move |(_, what)| format!("{} in vrrp_instance {}", what, i.name))
            })
            .collect();
        if !changed.is_empty() {
            return Err(ConfigErrors {
                errors: vec![ConfigError {
                    message: format!(
                        "vrrp_strict cannot just be left out: keepalived's strict mode ignores {}, \
                         which ha-lb would honour (a peer on keepalived would elect differently); \
                         remove them, or vrrp_strict, first",
                        changed.join(", ")
                    ),
                    ..strict.clone()
                }],
            });
        }
    }
    Ok((loaded, dropped))
}

/// `dropped`: leave [`DROPPABLE`] keywords out and report them there.
fn parse_opts(
    text: &str,
    origin: &Path,
    host: Option<&Host>,
    dropped: Option<&mut Vec<ConfigError>>,
) -> Result<Loaded, ConfigErrors> {
    let (lowered, ctx) = lower(text, origin, dropped.is_some());
    let at = |(loc, message): &(Loc, String)| ConfigError {
        file: ctx.files[loc.file as usize].clone(),
        line: loc.line as usize,
        col: loc.col as usize,
        message: message.clone(),
    };
    if let Some(d) = dropped {
        d.extend(ctx.dropped.iter().map(at));
    }
    let labels = lowered.line_labels(&ctx.files);
    let result = native::parse_labelled(&lowered.text(), origin, labels, host);
    let mut errors: Vec<(Loc, String)> = ctx.errors.clone();
    if let Err(e) = &result {
        for err in &e.errors {
            if err.message == validate::NOTHING_TO_DO && !ctx.errors.is_empty() {
                // Refused anyway, and likely for what made it empty (as the reader does).
            } else if err.message == validate::NOTHING_TO_DO {
                // About the whole file, which may have no line to point at (all it had was
                // an include that matched nothing): its first line, naming such includes.
                let first = Loc { seq: 0, file: 0, line: 1, col: 1 };
                let mut m = err.message.clone();
                for (loc, pattern) in &ctx.empty_includes {
                    let f = ctx.files[loc.file as usize].display();
                    m.push_str(&format!(
                        "; include {pattern:?} at {f}:{} matched no file",
                        loc.line
                    ));
                }
                errors.push((first, m));
            } else if let Some(loc) = lowered.origin(err.line, err.col) {
                // None: on a line whose value this front-end already reported.
                errors.push((loc, err.message.clone()));
            }
        }
    }
    if errors.is_empty() {
        // The reader's errors are never all suppressed unless this front-end found some,
        // so this is the reader's Ok.
        let mut warnings = ctx.warnings.clone();
        warnings.sort_by_key(|(loc, _)| *loc);
        return result.map(|config| Loaded { config, warnings: warnings.iter().map(at).collect() });
    }
    errors.sort_by_key(|(loc, _)| *loc);
    errors.dedup();
    Err(ConfigErrors { errors: errors.iter().map(at).collect() })
}

fn lower(text: &str, origin: &Path, drop_unsupported: bool) -> (Lowered, Ctx) {
    let mut ctx = Ctx { drop_unsupported, ..Ctx::default() };
    let mut tokens = Vec::new();
    let canonical = std::fs::canonicalize(origin).unwrap_or_else(|_| origin.to_path_buf());
    ctx.stack.push(canonical);
    ctx.lex(text, origin, &mut tokens);
    ctx.stack.pop();
    let mut stmts = Parser { toks: &tokens, i: 0 }.block(&mut ctx, None);
    default_protocol(&mut ctx, &mut stmts);
    let unweighted = SyncUnweighted::of(&stmts);
    let mut low = Lowerer { ctx: &mut ctx, out: Lowered::default(), unweighted };
    low.top(&stmts);
    let out = low.out;
    (out, ctx)
}

/// keepalived's default `protocol` of a `virtual_server ADDR PORT` is UDP (check_data.c
/// validate_check_config: "no protocol set - defaulting to UDP", as the kernel would), not
/// the TOML default, TCP: such a virtual server is given `protocol UDP`, with a warning —
/// `virtual_server group NAME` too (its members are addresses: ha-lb refuses fwmark ones).
fn default_protocol(ctx: &mut Ctx, stmts: &mut [Stmt]) {
    for s in stmts.iter_mut().filter(|s| s.key() == "virtual_server") {
        if s.args.first().is_some_and(|a| a.text == "fwmark") {
            continue;
        }
        let Some(b) = s.block.as_mut() else { continue };
        if b.iter().any(|st| st.key() == "protocol") {
            continue;
        }
        let at = |text: &str| Word { text: text.to_string(), quoted: false, loc: s.kw.loc };
        b.push(Stmt { kw: at("protocol"), args: vec![at("UDP")], block: None });
        ctx.warn(
            s.kw.loc,
            "virtual_server without protocol: keepalived's default, UDP, applies (not ha-lb's TOML default, TCP); write protocol UDP or protocol TCP",
        );
    }
}

// ---------------------------------------------------------------------------------------
// positions and tokens
// ---------------------------------------------------------------------------------------

/// Where a token is. Ordered by `seq`, its place in the whole token stream with includes
/// spliced in, so errors come out in reading order across files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Loc {
    seq: u32,
    file: u32,
    line: u32,
    col: u32,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String, bool),
    Open,
    /// The `{` of a line already reported as unsupported: its block is skipped.
    SkipOpen,
    Close,
    /// End of a statement: the end of a line.
    End,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    loc: Loc,
}

#[derive(Debug, Clone)]
struct Word {
    text: String,
    quoted: bool,
    loc: Loc,
}

/// `keyword args… [{ statements }]`.
#[derive(Debug, Clone)]
struct Stmt {
    kw: Word,
    args: Vec<Word>,
    block: Option<Vec<Stmt>>,
}

impl Stmt {
    fn key(&self) -> &str {
        &self.kw.text
    }
}

#[derive(Default)]
struct Ctx {
    files: Vec<PathBuf>,
    errors: Vec<(Loc, String)>,
    /// Leave [`DROPPABLE`] keywords out (into `dropped`) instead of refusing them.
    drop_unsupported: bool,
    dropped: Vec<(Loc, String)>,
    /// Accepted, but the operator should know (keepalived logs the same).
    warnings: Vec<(Loc, String)>,
    /// Glob includes that matched no file: where, and the pattern.
    empty_includes: Vec<(Loc, String)>,
    seq: u32,
    /// Canonical paths of the files being read, for include cycles.
    stack: Vec<PathBuf>,
}

impl Ctx {
    fn err(&mut self, loc: Loc, msg: impl Into<String>) {
        self.errors.push((loc, msg.into()));
    }

    fn warn(&mut self, loc: Loc, msg: impl Into<String>) {
        self.warnings.push((loc, msg.into()));
    }

    fn next_seq(&mut self) -> u32 {
        self.seq += 1;
        self.seq
    }

    /// Tokenize one file's text into `out`, splicing included files in place.
    fn lex(&mut self, text: &str, path: &Path, out: &mut Vec<Token>) {
        let file = self.files.len() as u32;
        self.files.push(path.to_path_buf());
        // A byte-order mark (an editor's, invisible): keepalived would read it as part of
        // the first keyword; the operator cannot see why that is unknown.
        let text = match text.strip_prefix('\u{feff}') {
            Some(rest) => {
                let at = Loc { seq: 0, file, line: 1, col: 1 };
                self.warn(at, "the file starts with a UTF-8 byte-order mark (ignored; keepalived would take it for part of the first keyword): save it without");
                rest
            }
            None => text,
        };
        for (lno, line) in text.lines().enumerate() {
            let mut toks: Vec<Token> = Vec::new();
            let (mut chars, cols) = decomment(line);
            // keepalived substitutes before it splits the line (at braces too): the reference
            // is blanked out here, so `${NAME}` leaves no braces behind, and reported below.
            let param = parameter(&chars).map(|(a, b)| {
                let text: String = chars[a..b].iter().collect();
                chars[a..b].fill(' ');
                (a, text)
            });
            let mut i = 0;
            let loc = |this: &mut Ctx, i: usize| Loc {
                seq: this.next_seq(),
                file,
                line: lno as u32 + 1,
                col: cols[i] as u32 + 1,
            };
            // keepalived (parser.c check_include) takes a line as an include before it splits
            // the line at braces: its words are read raw, so `conf.d/{a,b}.conf` is one word.
            let words = if param.is_none() { raw_words(&chars) } else { Vec::new() };
            if let Some((at, _, _)) = words.first().filter(|(_, w, q)| w == "include" && !q) {
                let kw = loc(self, *at);
                let mut args = Vec::new();
                for (at, w, quoted) in &words[1..] {
                    let l = loc(self, *at);
                    if *quoted && chars[*at + 1 + w.chars().count()..].first() != Some(&'"') {
                        self.err(l, "this quoted string is not closed on its line");
                    }
                    args.push(Word { text: w.clone(), quoted: *quoted, loc: l });
                }
                self.include(&args, kw, path, out);
                continue;
            }
            while i < chars.len() {
                let c = chars[i];
                // keepalived splits on ASCII white space only: a no-break or ideographic space
                // (pasted from a web page) stays in the word, which then reads as keepalived
                // would read it (usually not at all), not as two words.
                if c.is_ascii_whitespace() {
                    i += 1;
                } else if c == '{' || c == '}' {
                    let tok = if c == '{' { Tok::Open } else { Tok::Close };
                    toks.push(Token { tok, loc: loc(self, i) });
                    i += 1;
                } else if c == '"' {
                    let l = loc(self, i);
                    let start = i + 1;
                    let mut j = start;
                    while j < chars.len() && chars[j] != '"' {
                        j += 1;
                    }
                    if j == chars.len() {
                        self.err(l, "this quoted string is not closed on its line");
                    }
                    let s: String = chars[start..j].iter().collect();
                    toks.push(Token { tok: Tok::Word(s, true), loc: l });
                    i = j + 1;
                } else {
                    let l = loc(self, i);
                    let start = i;
                    while i < chars.len()
                        && !chars[i].is_ascii_whitespace()
                        && !matches!(chars[i], '{' | '}' | '"')
                    {
                        i += 1;
                    }
                    let s: String = chars[start..i].iter().collect();
                    // keepalived splits on white space and quotes only: `eth1;` is one word.
                    // Written as a statement separator, it would name something else.
                    if s.ends_with(';') {
                        let at = loc(self, i - 1);
                        self.err(
                            at,
                            format!("';' does not end a statement in keepalived.conf (keepalived reads {s:?} as one word); write one statement per line, or quote the word"),
                        );
                    }
                    toks.push(Token { tok: Tok::Word(s, false), loc: l });
                }
            }
            let param = param.map(|(a, text)| {
                (
                    loc(self, a),
                    format!("parameter substitution ({text}) is not supported by ha-lb: keepalived replaces $NAME and ${{NAME}} anywhere on a line, quoted too, when NAME is defined, and $_PWD, $_INSTANCE and $_RANDOM always are; write the value out, or generate one file per node"),
                )
            });
            let rejected = toks
                .iter()
                .find_map(|t| match &t.tok {
                    Tok::Word(w, false) if w.starts_with('@') && t.loc == toks[0].loc => Some((
                        t.loc,
                        format!("conditional line {w:?} is not supported by ha-lb; generate one file per node"),
                    )),
                    _ => None,
                })
                .or(param);
            if let Some((loc, msg)) = rejected {
                // Reported once; the line's words are dropped, its braces kept (their blocks
                // skipped) so the rest of the file keeps its structure.
                self.err(loc, msg);
                toks.retain(|t| matches!(t.tok, Tok::Open | Tok::Close));
                for t in &mut toks {
                    if t.tok == Tok::Open {
                        t.tok = Tok::SkipOpen;
                    }
                }
            }
            out.extend(toks);
            let end = Loc {
                seq: self.next_seq(),
                file,
                line: lno as u32 + 1,
                col: line.chars().count() as u32 + 1,
            };
            out.push(Token { tok: Tok::End, loc: end });
        }
    }

    /// `include PATTERN`: relative to the including file's directory; a glob (`*`, `?`,
    /// `[…]`, `{a,b}` alternatives: keepalived globs with GLOB_BRACE) may match nothing, a
    /// plain path must exist. keepalived includes only with exactly one word after `include`.
    fn include(&mut self, args: &[Word], kw: Loc, path: &Path, out: &mut Vec<Token>) {
        let t = match args {
            [t] => t,
            [] => {
                self.err(kw, "include needs a file name or pattern");
                return;
            }
            [_, second, ..] => {
                self.err(
                    second.loc,
                    "include takes one file name or pattern: keepalived includes only with exactly one (it reads this line as an unknown keyword and includes nothing); write one include per line",
                );
                return;
            }
        };
        let pattern = &t.text;
        let base = path.parent().unwrap_or(Path::new(""));
        let full = base.join(pattern);
        let alternatives = brace_alternatives(pattern);
        let is_glob = alternatives.is_some() || pattern.contains(['*', '?', '[']);
        let files: Vec<PathBuf> = match &alternatives {
            Some(alts) => alts.iter().flat_map(|a| glob(&base.join(a))).collect(),
            None if is_glob => glob(&full),
            None => vec![full.clone()],
        };
        if files.is_empty() {
            // keepalived (parser.c read_conf_file): "No config files matched", and on.
            self.warn(
                t.loc,
                format!(
                    "include {pattern:?} matched no file ({}): nothing is read from it",
                    full.display()
                ),
            );
            self.empty_includes.push((t.loc, pattern.clone()));
        }
        for f in files {
            let text = match read_conf(&f) {
                Ok(t) => t,
                Err(e) => {
                    self.err(t.loc, format!("include {:?}: {}: {e}", pattern, f.display()));
                    continue;
                }
            };
            let canonical = std::fs::canonicalize(&f).unwrap_or_else(|_| f.clone());
            if self.stack.contains(&canonical) {
                self.err(
                    t.loc,
                    format!(
                        "include {:?}: {} includes itself (an include cycle)",
                        pattern,
                        f.display()
                    ),
                );
                continue;
            }
            self.stack.push(canonical);
            self.lex(&text, &f, out);
            self.stack.pop();
        }
    }
}

/// A line's words as keepalived's alloc_strvec splits them, at white space only: a word
/// starting with `"` runs to the next `"` (quoted), any other to white space or a `"`.
/// Returns each word's start in `chars`, its text and whether it was quoted.
fn raw_words(chars: &[char]) -> Vec<(usize, String, bool)> {
    let mut words = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        let quoted = chars[i] == '"';
        let from = if quoted { i + 1 } else { i };
        let len = chars[from..]
            .iter()
            .position(|&c| if quoted { c == '"' } else { c.is_ascii_whitespace() || c == '"' })
            .unwrap_or(chars.len() - from);
        words.push((start, chars[from..from + len].iter().collect(), quoted));
        i = from + len + usize::from(quoted);
    }
    words
}

/// The alternatives of an include pattern with `{a,b}` in it, as glob(3) with GLOB_BRACE
/// expands them (keepalived globs includes so): the first `{` with a matching `}` gives one
/// pattern per comma-separated alternative (each expanded again, for later or nested
/// braces), in order. None: no such `{`, so no alternatives.
fn brace_alternatives(pattern: &str) -> Option<Vec<String>> {
    let open = pattern.find('{')?;
    let (mut depth, mut commas, mut close) = (0usize, vec![], None);
    for (k, c) in pattern[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    close = Some(open + k);
                    break;
                }
            }
            ',' if depth == 1 => commas.push(open + k),
            _ => {}
        }
    }
    let close = close?;
    let (head, tail) = (&pattern[..open], &pattern[close + 1..]);
    let bounds: Vec<usize> = std::iter::once(open).chain(commas).chain([close]).collect();
    let mut out = Vec::new();
    for w in bounds.windows(2) {
        let alt = format!("{head}{}{tail}", &pattern[w[0] + 1..w[1]]);
        match brace_alternatives(&alt) {
            Some(more) => out.extend(more),
            None => out.push(alt),
        }
    }
    Some(out)
}

/// The first place on a line where keepalived may substitute a parameter (parser.c
/// replace_param), as `start..end` in `chars`: a `$` followed by a letter or `_` (`$NAME`,
/// to the name's end) or by `{` (`${NAME …}`, to the `}`), anywhere, in quotes too. A `$`
/// followed by anything else (`$$`, `$1`, a final `$`) stays literal, as in keepalived.
fn parameter(chars: &[char]) -> Option<(usize, usize)> {
    let a = chars
        .windows(2)
        .position(|p| p[0] == '$' && (p[1].is_ascii_alphabetic() || p[1] == '_' || p[1] == '{'))?;
    let end = if chars[a + 1] == '{' {
        chars[a..].iter().position(|&c| c == '}').map_or(chars.len(), |k| a + k + 1)
    } else {
        let name = chars[a + 1..].iter().take_while(|c| c.is_ascii_alphanumeric() || **c == '_');
        a + 1 + name.count()
    };
    Some((a, end))
}

/// A line without its comment, as keepalived's `decomment()` (parser.c) reads it: the
/// comment starts at the first `!` or `#` outside `"…"`, anywhere (inside a word too:
/// `router_id LB1#primary` is `LB1`), and outside quotes `\!` and `\#` are a literal `!` and
/// `#`. Inside quotes nothing is a comment and a backslash is kept with the character after
/// it. Returns the characters kept and the column (0-based) each came from.
fn decomment(line: &str) -> (Vec<char>, Vec<usize>) {
    let chars: Vec<char> = line.chars().collect();
    let (mut kept, mut cols) = (Vec::new(), Vec::new());
    let mut quoted = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' => quoted = !quoted,
            '\\' if i + 1 < chars.len() => {
                let next = chars[i + 1];
                if !quoted && (next == '!' || next == '#') {
                    kept.push(next);
                    cols.push(i);
                } else {
                    kept.extend([c, next]);
                    cols.extend([i, i + 1]);
                }
                i += 2;
                continue;
            }
            '!' | '#' if !quoted => break,
            _ => {}
        }
        kept.push(c);
        cols.push(i);
        i += 1;
    }
    (kept, cols)
}

/// The most a keepalived.conf file (or an include) may hold: far more than any real one.
const MAX_CONF_BYTES: u64 = 16 << 20;

/// Read a configuration file, as keepalived opens one (parser.c read_conf_file,
/// check_conf_file): only a regular file that is not executable. keepalived skips anything
/// else with a log line ("not a regular non-executable file - skipping"); here it is an error,
/// since reading it would take what keepalived leaves out, and skipping it quietly would run
/// a configuration other than the one written. Checked before opening, so a FIFO cannot
/// block `check` or a reload, and read up to [`MAX_CONF_BYTES`], so `/dev/zero` or a runaway
/// file cannot exhaust memory.
fn read_conf(path: &Path) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read the file: {e}"))?;
    if !meta.is_file() {
        return Err(
            "not a regular file (keepalived skips it, saying so); name a regular file".into()
        );
    }
    if meta.permissions().mode() & 0o111 != 0 {
        return Err("the file is executable, and keepalived skips an executable configuration file (\"not a regular non-executable file\"); remove its execute permission (chmod a-x)".into());
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CONF_BYTES + 1).read_to_string(&mut text))
        .map_err(|e| format!("cannot read the file: {e}"))?;
    if text.len() as u64 > MAX_CONF_BYTES {
        return Err(format!("the file is larger than {} MiB", MAX_CONF_BYTES >> 20));
    }
    Ok(text)
}

/// The files matching a glob pattern (`*`, `?`, `[…]` in any component), sorted.
fn glob(pattern: &Path) -> Vec<PathBuf> {
    let mut found = vec![PathBuf::new()];
    for comp in pattern.components() {
        let part = comp.as_os_str().to_string_lossy();
        if !part.contains(['*', '?', '[']) {
            found = found.into_iter().map(|p| p.join(comp)).collect();
            continue;
        }
        let mut next = Vec::new();
        for dir in found {
            let read = if dir.as_os_str().is_empty() { Path::new(".") } else { dir.as_path() };
            let Ok(entries) = std::fs::read_dir(read) else { continue };
            let mut names: Vec<String> = entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            for n in names {
                if !n.starts_with('.') && glob_match(&part, &n) {
                    next.push(dir.join(n));
                }
            }
        }
        found = next;
    }
    // Directories are skipped, as keepalived does (GLOB_MARK); anything else that is not a
    // regular file is left for read_conf to report.
    found.retain(|p| p.exists() && !p.is_dir());
    found
}

fn glob_match(pat: &str, name: &str) -> bool {
    fn m(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len()).any(|k| m(&p[1..], &n[k..])),
            Some('?') => !n.is_empty() && m(&p[1..], &n[1..]),
            Some('[') => {
                let Some(close) = p.iter().position(|&c| c == ']') else {
                    return n.first() == Some(&'[') && m(&p[1..], &n[1..]);
                };
                let Some(&c) = n.first() else { return false };
                let set = &p[1..close];
                let (neg, set) = match set.first() {
                    Some('!') | Some('^') => (true, &set[1..]),
                    _ => (false, set),
                };
                let mut hit = false;
                let mut k = 0;
                while k < set.len() {
                    if k + 2 < set.len() && set[k + 1] == '-' {
                        hit |= set[k] <= c && c <= set[k + 2];
                        k += 3;
                    } else {
                        hit |= set[k] == c;
                        k += 1;
                    }
                }
                hit != neg && m(&p[close + 1..], &n[1..])
            }
            Some(&c) => n.first() == Some(&c) && m(&p[1..], &n[1..]),
        }
    }
    let p: Vec<char> = pat.chars().collect();
    let n: Vec<char> = name.chars().collect();
    m(&p, &n)
}

// ---------------------------------------------------------------------------------------
// blocks
// ---------------------------------------------------------------------------------------

struct Parser<'t> {
    toks: &'t [Token],
    i: usize,
}

impl Parser<'_> {
    /// Statements up to the `}` matching `open` (or the end, for the top level).
    fn block(&mut self, ctx: &mut Ctx, open: Option<Loc>) -> Vec<Stmt> {
        let mut stmts = Vec::new();
        loop {
            let Some(t) = self.toks.get(self.i) else {
                if let Some(o) = open {
                    ctx.err(o, "this '{' is never closed");
                }
                return stmts;
            };
            self.i += 1;
            match &t.tok {
                Tok::End => {}
                Tok::Close => {
                    if open.is_some() {
                        return stmts;
                    }
                    ctx.err(t.loc, "unmatched '}'");
                }
                Tok::Open => {
                    ctx.err(t.loc, "a block needs a keyword before its '{'");
                    self.block(ctx, Some(t.loc));
                }
                Tok::SkipOpen => {
                    self.block(ctx, Some(t.loc));
                }
                Tok::Word(text, quoted) => {
                    let kw = Word { text: text.clone(), quoted: *quoted, loc: t.loc };
                    let mut args = Vec::new();
                    while let Some(Token { tok: Tok::Word(w, q), loc }) = self.toks.get(self.i) {
                        args.push(Word { text: w.clone(), quoted: *q, loc: *loc });
                        self.i += 1;
                    }
                    // The block may open on the same line or the next.
                    let mut j = self.i;
                    while matches!(self.toks.get(j), Some(Token { tok: Tok::End, .. })) {
                        j += 1;
                    }
                    let block = match self.toks.get(j) {
                        Some(Token { tok: Tok::Open, loc }) => {
                            let loc = *loc;
                            self.i = j + 1;
                            Some(self.block(ctx, Some(loc)))
                        }
                        _ => None,
                    };
                    stmts.push(Stmt { kw, args, block });
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// the lowered TOML text
// ---------------------------------------------------------------------------------------

/// One line of TOML with the source position of each piece: `segs` are (first column,
/// origin), in column order.
#[derive(Default, Clone)]
struct Line {
    text: String,
    segs: Vec<(usize, Loc)>,
    /// An error was already reported for this line's value: the reader's complaint about
    /// the placeholder written instead is dropped.
    suppress: bool,
}

impl Line {
    fn push(&mut self, s: &str, origin: Option<Loc>) -> &mut Self {
        if let Some(o) = origin {
            self.segs.push((self.text.chars().count() + 1, o));
        }
        self.text.push_str(s);
        self
    }
}

#[derive(Default)]
struct Lowered {
    lines: Vec<Line>,
}

impl Lowered {
    fn text(&self) -> String {
        let mut s = String::new();
        for l in &self.lines {
            s.push_str(&l.text);
            s.push('\n');
        }
        s
    }

    /// How messages citing a lowered line name it: its source line, with the file when
    /// that is not the main one.
    fn line_labels(&self, files: &[PathBuf]) -> Vec<String> {
        self.lines
            .iter()
            .map(|l| match l.segs.first() {
                Some((_, o)) if o.file == 0 => o.line.to_string(),
                Some((_, o)) => format!("{} of {}", o.line, files[o.file as usize].display()),
                None => "?".to_string(),
            })
            .collect()
    }

    /// The source position of a (line, col) of the lowered text; `None` when the error
    /// there is one already reported.
    fn origin(&self, line: usize, col: usize) -> Option<Loc> {
        let l = self.lines.get(line.checked_sub(1)?).or_else(|| self.lines.last())?;
        if l.suppress {
            return None;
        }
        l.segs.iter().rev().find(|(c, _)| *c <= col).or(l.segs.first()).map(|(_, o)| *o)
    }
}

// ---------------------------------------------------------------------------------------
// keywords
// ---------------------------------------------------------------------------------------

/// The shape of a keyword's value.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// One word, a TOML string.
    Str,
    Int,
    /// A number of seconds (integer or decimal).
    Secs,
    /// A bare flag, or followed by true/false (also yes/no, on/off).
    Flag,
    /// One (quoted) word: the command line.
    Command,
    /// `USER [GROUP]`.
    User,
    /// UDP_CHECK `require_reply [HEX]`.
    RequireReply,
}

fn kind(key: &str) -> Kind {
    match key {
        "vrrp_version"
        | "version"
        | "virtual_router_id"
        | "priority"
        | "weight"
        | "rise"
        | "fall"
        | "garp_master_repeat"
        | "garp_master_refresh_repeat"
        | "quorum"
        | "hysteresis"
        | "retry"
        | "connect_port"
        | "persistence_timeout"
        | "port" => Kind::Int,
        "interval"
        | "timeout"
        | "advert_int"
        | "preempt_delay"
        | "garp_master_delay"
        | "garp_master_refresh"
        | "delay_loop"
        | "connect_timeout"
        | "delay_before_retry"
        | "warmup"
        | "misc_timeout"
        | "vrrp_garp_interval"
        | "vrrp_gna_interval" => Kind::Secs,
        "enable_script_security"
        | "nopreempt"
        | "dont_track_primary"
        | "alpha"
        | "sh-port"
        | "mh-port"
        | "inhibit_on_failure"
        | "sync_group_tracking_weight"
        | "misc_dynamic" => Kind::Flag,
        "script" | "notify_master" | "notify_backup" | "notify_fault" | "notify_stop"
        | "notify" | "quorum_up" | "quorum_down" | "notify_up" | "notify_down" | "misc_path" => {
            Kind::Command
        }
        "script_user" | "user" => Kind::User,
        "require_reply" => Kind::RequireReply,
        _ => Kind::Str,
    }
}

/// keepalived spellings read as another keyword.
fn canonical(kw: &str) -> &str {
    match kw {
        "nb_get_retry" => "retry",
        "lvs_sched" => "lb_algo",
        "lvs_method" => "lb_kind",
        "vrrp_track_file" => "track_file",
        // vrrp_parser.c: both set the adverts' source address (unicast_src_ip also marks
        // the instance unicast, which ha-lb's unicast_peer decides).
        "mcast_src_ip" => "unicast_src_ip",
        other => other,
    }
}

/// global_defs keywords that set a default for every vrrp_instance.
const INSTANCE_DEFAULTS: &[(&str, &str)] = &[
    ("vrrp_garp_master_delay", "garp_master_delay"),
    ("vrrp_garp_master_repeat", "garp_master_repeat"),
    ("vrrp_garp_master_refresh", "garp_master_refresh"),
    ("vrrp_garp_master_refresh_repeat", "garp_master_refresh_repeat"),
];

/// What to use instead, for keepalived keywords ha-lb does not support.
fn unsupported_hint(kw: &str) -> &'static str {
    match kw {
        "vrrp_mcast_group4" | "vrrp_mcast_group6" | "mcast_dst_ip" => {
            "; ha-lb sends multicast adverts to VRRP's own group (224.0.0.18 / ff02::12); to send them elsewhere, list the peers in unicast_peer"
        }
        "no_preempt" => "; use nopreempt",
        "smtp_alert"
        | "smtp_server"
        | "smtp_connect_timeout"
        | "notification_email"
        | "notification_email_from"
        | "smtp_helo_name"
        | "smtp_alert_vrrp"
        | "smtp_alert_checker"
        | "notify_fifo"
        | "notify_fifo_script"
        | "vrrp_notify_fifo"
        | "vrrp_notify_fifo_script"
        | "lvs_notify_fifo"
        | "lvs_notify_fifo_script" => "; use notify scripts",
        "virtualhost" => "; set virtualhost in each HTTP_GET / SSL_GET",
        "flag-2" => "; with lb_algo sh or mh, use sh-port / mh-port",
        "priority_weight" => "; use weight",
        _ => "",
    }
}

/// keepalived keywords `convert --drop-unsupported` leaves out, and what is lost: features
/// ha-lb does not have that do not decide which node holds a VIP, which real servers are up,
/// or where a connection goes. keepalived's stock sample configuration has several.
const DROPPABLE: &[(&[&str], &str)] = &[
    (
        &[
            "notification_email",
            "notification_email_from",
            "smtp_server",
            "smtp_connect_timeout",
            "smtp_helo_name",
            "smtp_alert",
            "smtp_alert_vrrp",
            "smtp_alert_checker",
        ],
        "no e-mail alerts (ha-lb has none; notify scripts can send them)",
    ),
    (
        &[
            "notify_fifo",
            "notify_fifo_script",
            "vrrp_notify_fifo",
            "vrrp_notify_fifo_script",
            "lvs_notify_fifo",
            "lvs_notify_fifo_script",
            "fifo_write_vrrp_states_on_reload",
        ],
        "no notify FIFO (ha-lb has none; use notify scripts)",
    ),
    (
        &[
            "enable_snmp_vrrp",
            "enable_snmp_checker",
            "enable_snmp_rfc",
            "enable_snmp_rfcv2",
            "enable_snmp_rfcv3",
            "enable_traps",
            "snmp_socket",
            "enable_dbus",
            "dbus_service_name",
        ],
        "no SNMP / D-Bus (ha-lb's status is `ha-lb status --json`)",
    ),
    (
        &["vrrp_strict"],
        "no strict mode: ha-lb adds no firewall rules for VIPs and checks adverts as the RFCs \
         say (v2 adverts listing other addresses are ignored, v3 ones accepted with a warning)",
    ),
    (
        &["vrrp_skip_check_adv_addr"],
        "adverts' address lists are checked (v2: a different list is ignored; v3: accepted with \
         a warning)",
    ),
    (&["checker_log_all_failures", "log_all_failures"], "failures are logged as ha-lb logs them"),
    (OBSOLETE, "nothing: it has no effect (see its error)"),
    (
        PROCESS_TUNING,
        "nothing about VIPs or forwarding: it tunes keepalived's own processes (scheduling, \
         memory locking, CPU affinity, names); give ha-lb's the service manager's settings",
    ),
];

/// keepalived keywords that no longer do anything: refused with a message saying so, left
/// out by `convert --drop-unsupported`.
const OBSOLETE: &[&str] = &["nat_mask", "net_mask"];

/// keepalived's process tuning keywords (global_defs): the vrrp / checker / bfd processes'
/// nice and realtime priorities, memory locking, CPU affinity, names.
const PROCESS_TUNING: &[&str] = &[
    "max_auto_priority",
    "min_auto_priority_delay",
    "vrrp_priority",
    "checker_priority",
    "bfd_priority",
    "vrrp_no_swap",
    "checker_no_swap",
    "bfd_no_swap",
    "vrrp_rt_priority",
    "checker_rt_priority",
    "bfd_rt_priority",
    "vrrp_rlimit_rttime",
    "checker_rlimit_rttime",
    "bfd_rlimit_rttime",
    "vrrp_cpu_affinity",
    "checker_cpu_affinity",
    "bfd_cpu_affinity",
    "vrrp_process_name",
    "checker_process_name",
    "bfd_process_name",
    "process_names",
];

/// What leaving `kw` out loses, when `convert --drop-unsupported` may.
fn droppable(kw: &str) -> Option<&'static str> {
    DROPPABLE.iter().find(|(kws, _)| kws.contains(&kw)).map(|(_, why)| *why)
}

/// keepalived keywords that ha-lb takes elsewhere (or not at all) but keepalived also takes
/// in this block (`what`): not supported here, with what to do instead.
fn unsupported_in(what: &str, kw: &str) -> Option<&'static str> {
    match (what, kw) {
        ("vrrp_sync_group", "track_script" | "track_interface" | "track_file") => {
            Some("put it in each member vrrp_instance")
        }
        ("real_server", "lvs_method") => {
            Some("a real server is forwarded by its virtual_server's lb_kind")
        }
        ("real_server", "alpha") => Some("set alpha on the virtual_server"),
        ("the top level", "SSL") => {
            Some("SSL_GET checks present no client certificate and accept any server certificate")
        }
        _ => None,
    }
}

/// keepalived.conf(5) keywords (keepalived 2.2): known, so not typos, but not supported.
const KEEPALIVED_KEYWORDS: &[&str] = &[
    "mh-fallback",
    "sh-fallback",
    "flag-1",
    "flag-2",
    "flag-3",
    "hashed",
    "BFD_CHECK",
    "DNS_CHECK",
    "FILE_CHECK",
    "PING_CHECK",
    "SMTP_CHECK",
    "accept",
    "bfd_instance",
    "bind_if",
    "bind_port",
    "check_unicast_src",
    "checker_log_all_failures",
    "child_wait_time",
    "config_save_dir",
    "data_use_instance",
    "dbus_service_name",
    "debug",
    "default_interface",
    "delay",
    "down_timer_adverts",
    "dynamic_interfaces",
    "enable_dbus",
    "enable_sni",
    "enable_snmp_checker",
    "enable_snmp_rfc",
    "enable_snmp_rfcv2",
    "enable_snmp_rfcv3",
    "enable_snmp_vrrp",
    "enable_traps",
    "fast_recovery",
    "fifo_write_vrrp_states_on_reload",
    "fork_delay",
    "fwmark",
    "garp_extra_if",
    "garp_group",
    "garp_interval",
    "garp_lower_prio_delay",
    "garp_lower_prio_repeat",
    "global_tracking",
    "gna_interval",
    "ha_suspend",
    "helo_name",
    "higher_prio_send_advert",
    "http_protocol",
    "include_check",
    "init_fail",
    "init_file",
    "ip_family",
    "kernel_rx_buf_size",
    "linkbeat_interfaces",
    "linkbeat_use_polling",
    "log_all_failures",
    "log_unknown_vrids",
    "lower_prio_no_advert",
    "lthreshold",
    "lvs_flush",
    "lvs_flush_on_stop",
    "lvs_notify_fifo",
    "lvs_notify_fifo_script",
    "lvs_timeouts",
    "max_auto_priority",
    "nat_mask",
    "net_mask",
    "mcast_dst_ip",
    "min_auto_priority_delay",
    "namespace_with_ipsets",
    "native_ipv6",
    "net_namespace",
    "net_namespace_ipvs",
    "nftables",
    "nftables_counters",
    "nftables_ifindex",
    "nftables_ipvs",
    "nftables_priority",
    "no_accept",
    "no_checker_emails",
    "no_email_faults",
    "no_preempt",
    "notification_email",
    "notification_email_from",
    "notify_deleted",
    "notify_fifo",
    "notify_fifo_script",
    "notify_master_rx_lower_pri",
    "notify_priority_changes",
    "old_unicast_checksum",
    "omega",
    "ops",
    "persistence_engine",
    "priority_weight",
    "process_names",
    "quorum_max",
    "random_seed",
    "regex",
    "regex_max_offset",
    "regex_min_offset",
    "regex_no_match",
    "regex_options",
    "regex_stack",
    "reload_check_config",
    "reload_file",
    "reload_repeat",
    "reload_time_file",
    "reverse",
    "rs_init_notifies",
    "script_security",
    "shutdown_script",
    "shutdown_script_timeout",
    "skip_check_adv_addr",
    "smtp_alert",
    "smtp_alert_checker",
    "smtp_alert_vrrp",
    "smtp_connect_timeout",
    "smtp_helo_name",
    "smtp_server",
    "snmp_socket",
    "sorry_server_inhibit",
    "sorry_server_lvs_method",
    "source_ip",
    "startup_script",
    "startup_script_timeout",
    "static_ipaddress",
    "static_routes",
    "static_rules",
    "strict_mode",
    "tmp_config_directory",
    "track_bfd",
    "track_group",
    "track_process",
    "track_src_ip",
    "umask",
    "unicast_fault_no_peer",
    "unicast_ttl",
    "use_ipvlan",
    "use_pid_dir",
    "use_vmac",
    "use_vmac_addr",
    "uthreshold",
    "virtual_routes",
    "virtual_rules",
    "virtual_server_group",
    "virtualhost",
    "vmac_xmit_base",
    "vrrp_check_unicast_src",
    "vrrp_cpu_affinity",
    "vrrp_down_timer_adverts",
    "vrrp_garp_extra_if",
    "vrrp_garp_lower_prio_delay",
    "vrrp_garp_lower_prio_repeat",
    "vrrp_higher_prio_send_advert",
    "vrrp_ipsets",
    "vrrp_iptables",
    "vrrp_lower_prio_no_advert",
    "vrrp_mcast_group4",
    "vrrp_mcast_group6",
    "vrrp_min_garp",
    "vrrp_netlink_cmd_rcv_bufs",
    "vrrp_netlink_monitor_rcv_bufs",
    "vrrp_no_swap",
    "vrrp_notify_fifo",
    "vrrp_notify_fifo_script",
    "vrrp_notify_priority_changes",
    "vrrp_priority",
    "vrrp_process_name",
    "vrrp_rlimit_rttime",
    "vrrp_rt_priority",
    "vrrp_rx_bufs_multiplier",
    "vrrp_rx_bufs_policy",
    "vrrp_skip_check_adv_addr",
    "vrrp_startup_delay",
    "vrrp_strict",
    "vrrp_track_process",
    "checker_cpu_affinity",
    "checker_no_swap",
    "checker_priority",
    "checker_process_name",
    "checker_rlimit_rttime",
    "checker_rt_priority",
    "bfd_cpu_affinity",
    "bfd_no_swap",
    "bfd_priority",
    "bfd_process_name",
    "bfd_rlimit_rttime",
    "bfd_rt_priority",
    "lvs_netlink_cmd_rcv_bufs",
    "lvs_netlink_monitor_rcv_bufs",
    "process_monitor_rcv_bufs",
    "snmp_name",
    "instance",
    "max_hops",
    "min_rx",
    "min_tx",
    "idle_tx",
    "multiplier",
    "passive",
    "neighbor_ip",
    "hoplimit",
    "ttl",
    "vrf",
    "weight_reverse",
    "preempt",
];

/// ha-lb's keys anywhere, to tell a keyword in the wrong block from an unsupported one.
fn is_halb_key(kw: &str) -> bool {
    [
        native::GLOBAL_KEYS,
        native::VRRP_SCRIPT_KEYS,
        native::TRACK_FILE_KEYS,
        native::VRRP_INSTANCE_KEYS,
        native::SYNC_GROUP_KEYS,
        native::VIRTUAL_SERVER_KEYS,
        native::REAL_SERVER_KEYS,
    ]
    .iter()
    .any(|keys| keys.contains(&kw))
        || native::CHECK_BLOCKS.iter().any(|b| native::check_keys(b).contains(&kw))
        || ["url", "path", "digest", "status_code", "auth_type", "auth_pass", "group"].contains(&kw)
}

// ---------------------------------------------------------------------------------------
// lowering
// ---------------------------------------------------------------------------------------

struct Lowerer<'c> {
    ctx: &'c mut Ctx,
    out: Lowered,
    /// Members of sync groups without `sync_group_tracking_weight` (instance → group), whose
    /// weighted trackers keepalived ignores; with the weights trackers take by default.
    unweighted: SyncUnweighted,
}

#[derive(Default)]
struct SyncUnweighted {
    /// Instance → why its weights are ignored (its sync group, or that it is the address
    /// owner), and whether it is for the latter (an owner's weighted interfaces are dropped,
    /// a member's count with weight 0).
    members: HashMap<String, (String, bool)>,
    script_weight: HashMap<String, i64>,
    /// Address owners (applied after the groups: a group member's reason names its group).
    owners: Vec<(String, String)>,
    file_weight: HashMap<String, i64>,
}

impl SyncUnweighted {
    /// keepalived (vrrp.c vrrp_complete_instance): in a sync group without
    /// `sync_group_tracking_weight` (or its deprecated `global_tracking`), a member's
    /// weighted `track_interface` counts with weight 0, its weighted `track_script` is not
    /// tracked, its `track_file` of weight 1 (the default) counts with weight 0 and of any
    /// other weight is not tracked.
    fn of(stmts: &[Stmt]) -> SyncUnweighted {
        let mut u = SyncUnweighted::default();
        let weight = |b: &[Stmt]| {
            b.iter()
                .find(|st| st.key() == "weight")
                .and_then(|st| st.args.first())
                .and_then(|w| w.text.parse::<i64>().ok())
        };
        for st in stmts {
            let Some(b) = &st.block else { continue };
            let Some(name) = st.args.first().map(|w| w.text.clone()) else { continue };
            match canonical(st.key()) {
                "vrrp_script" => {
                    u.script_weight.insert(name, weight(b).unwrap_or(0));
                }
                "track_file" => {
                    u.file_weight.insert(name, weight(b).unwrap_or(1));
                }
                "vrrp_sync_group" => {
                    let weighted = b.iter().any(|g| {
                        matches!(g.key(), "sync_group_tracking_weight" | "global_tracking")
                    });
                    if weighted {
                        continue;
                    }
                    let why = format!("for a member of vrrp_sync_group {name} without sync_group_tracking_weight (set it in the group to apply the weight)");
                    for g in b.iter().filter(|g| g.key() == "group") {
                        for m in g.block.iter().flatten() {
                            for w in std::iter::once(&m.kw).chain(&m.args) {
                                u.members.insert(w.text.clone(), (why.clone(), false));
                            }
                        }
                    }
                }
                // The same rule for an address owner: its priority is not moved by trackers.
                "vrrp_instance" if is_address_owner(b) => {
                    let why =
                        "for an address owner (priority 255), whose priority trackers do not move"
                            .to_string();
                    u.owners.push((name.clone(), why));
                }
                _ => {}
            }
        }
        for (inst, why) in std::mem::take(&mut u.owners) {
            u.members.entry(inst).or_insert((why, true));
        }
        u
    }
}

/// A vrrp_instance block's `state` and `priority` statements (the first of each).
fn state_and_priority(b: &[Stmt]) -> (Option<&Stmt>, Option<&Stmt>) {
    let first = |key: &str| b.iter().find(|st| st.key() == key && st.block.is_none());
    (first("state"), first("priority"))
}

fn is_master(w: &Word) -> bool {
    w.text == "MASTER" && !w.quoted
}

fn is_255(w: &Word) -> bool {
    w.text.parse::<i64>() == Ok(255) && !w.quoted
}

/// Whether a vrrp_instance block's priority is 255 (written, or derived from `state MASTER`
/// without a priority, as `derive_state_or_priority` does): an address owner.
fn is_address_owner(b: &[Stmt]) -> bool {
    match state_and_priority(b) {
        (_, Some(p)) => matches!(p.args.as_slice(), [w] if is_255(w)),
        (Some(s), None) => matches!(s.args.as_slice(), [w] if is_master(w)),
        (None, None) => false,
    }
}

/// A block being lowered: its keyword names and the keys already set.
struct Blk {
    what: &'static str,
    allowed: Vec<&'static str>,
    seen: HashMap<String, Loc>,
}

impl Blk {
    fn new(what: &'static str, allowed: &[&'static str]) -> Blk {
        Blk {
            what,
            allowed: allowed
                .iter()
                .copied()
                .filter(|k| !matches!(*k, "name" | "address" | "port" | "real_server"))
                .collect(),
            seen: HashMap::new(),
        }
    }
}

impl Lowerer<'_> {
    fn err(&mut self, loc: Loc, msg: impl Into<String>) {
        self.ctx.err(loc, msg);
    }

    fn line(&mut self, line: Line) {
        self.out.lines.push(line);
    }

    fn header(&mut self, h: &str, loc: Loc) {
        let mut l = Line::default();
        l.push(h, Some(loc));
        self.line(l);
    }

    /// A keyword this block does not take: not supported, or unknown (with a suggestion).
    fn reject(&mut self, s: &Stmt, blk: &Blk) {
        let kw = s.key();
        if self.ctx.drop_unsupported {
            if let Some(why) = droppable(kw) {
                self.ctx.dropped.push((s.kw.loc, format!("{kw} left out: {why}")));
                return;
            }
        }
        // A top-level block inside another: most likely a `}` missing above it.
        const TOP_BLOCKS: &[&str] = &[
            "global_defs",
            "vrrp_script",
            "vrrp_instance",
            "vrrp_sync_group",
            "virtual_server_group",
            "virtual_server",
        ];
        if blk.what != "the top level" && TOP_BLOCKS.contains(&kw) && s.block.is_some() {
            self.err(
                s.kw.loc,
                format!("{kw} is a top-level block, here inside a {}: a `}}` is probably missing above it", blk.what),
            );
            return;
        }
        if let Some(hint) = unsupported_in(blk.what, kw) {
            let msg = if blk.what == "the top level" {
                format!("{kw} is not supported by ha-lb; {hint}")
            } else {
                format!("{kw} in a {} is not supported by ha-lb; {hint}", blk.what)
            };
            self.err(s.kw.loc, msg);
            return;
        }
        let hint = unsupported_hint(kw);
        // A keyword ha-lb takes elsewhere is misplaced here, unless keepalived also takes it
        // here and ha-lb says what to use instead (virtualhost on a virtual_server).
        if KEEPALIVED_KEYWORDS.contains(&kw) && (!is_halb_key(kw) || !hint.is_empty()) {
            let drop = if droppable(kw).is_some() {
                " (`ha-lb convert --drop-unsupported` leaves it out)"
            } else {
                ""
            };
            let msg = if kw == "nat_mask" {
                format!("nat_mask is obsolete and has no effect: keepalived 1.x took it for LVS-NAT on Linux 2.2, keepalived 2 does not know it; remove it{drop}")
            } else if kw == "net_mask" {
                format!("net_mask has no effect: it is not a keepalived keyword (keepalived reports it as unknown and ignores it; nat_mask was keepalived 1.x's); remove it{drop}")
            } else if PROCESS_TUNING.contains(&kw) {
                format!("{kw} is not supported by ha-lb: it tunes keepalived's own processes and changes nothing about VIPs or forwarding; remove it{drop}")
            } else {
                format!("{kw} is not supported by ha-lb{hint}{drop}")
            };
            self.err(s.kw.loc, msg);
        } else {
            let msg = native::unknown_name("keyword", kw, blk.what, &blk.allowed);
            self.err(s.kw.loc, msg);
        }
    }

    /// Record `key` as set; false (and an error) when it already was.
    /// "line N" of `first` as seen from `here`: with the file's name when it is another
    /// (an include).
    fn line_of(&self, first: Loc, here: Loc) -> String {
        if first.file == here.file {
            format!("line {}", first.line)
        } else {
            format!("line {} of {}", first.line, self.ctx.files[first.file as usize].display())
        }
    }

    fn once(&mut self, blk: &mut Blk, key: &str, s: &Stmt) -> bool {
        if let Some(&first) = blk.seen.get(key) {
            // All global_defs blocks make one (keepalived lets a later one override).
            let this = if blk.what == "global_defs" {
                "global_defs (all its blocks count as one)".to_string()
            } else {
                format!("this {}", blk.what)
            };
            let msg = format!(
                "{} is set twice in {this} (first at {})",
                s.key(),
                self.line_of(first, s.kw.loc)
            );
            self.err(s.kw.loc, msg);
            return false;
        }
        blk.seen.insert(key.to_string(), s.kw.loc);
        true
    }

    fn no_block(&mut self, s: &Stmt) -> bool {
        if s.block.is_some() {
            self.err(s.kw.loc, format!("{} does not take a {{ }} block", s.key()));
            return false;
        }
        true
    }

    fn need_block<'s>(&mut self, s: &'s Stmt) -> Option<&'s [Stmt]> {
        match &s.block {
            Some(b) => Some(b),
            None => {
                self.err(s.kw.loc, format!("{} needs a {{ }} block", s.key()));
                None
            }
        }
    }

    /// The TOML value of a scalar keyword, or the error for its shape. `Err` carries a
    /// placeholder to write (suppressed) so the reader sees the key as present.
    fn value(&mut self, key: &str, s: &Stmt) -> Result<(String, Loc), String> {
        let k = kind(key);
        let args = &s.args;
        let kw = s.key();
        match k {
            Kind::Str | Kind::Command => {
                let w = self.one(k, s)?;
                Ok((toml_str(&w.text), w.loc))
            }
            Kind::Int => {
                let w = self.one(k, s)?;
                match w.text.parse::<i64>() {
                    Ok(n) if !w.quoted => Ok((n.to_string(), w.loc)),
                    _ => {
                        self.err(w.loc, format!("{kw} {:?} is not an integer", w.text));
                        Err(toml_str(&w.text))
                    }
                }
            }
            Kind::Secs => {
                let w = self.one(k, s)?;
                let t = w.text.as_str();
                let numeric = !w.quoted
                    && !t.is_empty()
                    && t.chars().all(|c| c.is_ascii_digit() || c == '.')
                    && t.parse::<f64>().is_ok_and(f64::is_finite);
                if !numeric {
                    self.err(w.loc, format!("{kw} {t:?} is not a number of seconds"));
                    return Err(toml_str(t));
                }
                let lit = if let Ok(n) = t.parse::<i64>() {
                    n.to_string()
                } else if t.split_once('.').is_some_and(|(i, f)| {
                    !i.is_empty() && !f.is_empty() && (i == "0" || !i.starts_with('0'))
                }) {
                    // Already a TOML float: keep it, so messages quote it as written.
                    t.to_string()
                } else {
                    format!("{:?}", t.parse::<f64>().unwrap_or(0.0))
                };
                Ok((lit, w.loc))
            }
            Kind::Flag => match args.len() {
                0 => Ok(("true".to_string(), s.kw.loc)),
                1 => {
                    match args[0].text.to_ascii_lowercase().as_str() {
                        "true" | "yes" | "on" => Ok(("true".to_string(), args[0].loc)),
                        "false" | "no" | "off" => Ok(("false".to_string(), args[0].loc)),
                        _ => {
                            self.err(
                            args[0].loc,
                            format!("{kw} is a flag: write {kw} alone, or {kw} true / false, not {:?}", args[0].text),
                        );
                            Err("false".to_string())
                        }
                    }
                }
                _ => {
                    self.err(args[1].loc, format!("{kw} takes at most one value (true or false)"));
                    Err("false".to_string())
                }
            },
            Kind::User => match args.len() {
                1 | 2 => Ok((toml_str(&join(args)), args[0].loc)),
                0 => {
                    self.err(s.kw.loc, format!("{kw} needs a user name (and optionally a group)"));
                    Err(String::new())
                }
                _ => {
                    self.err(args[2].loc, format!("{kw} takes a user and a group, no more"));
                    Err(toml_str(&args[0].text))
                }
            },
            Kind::RequireReply => match args.len() {
                0 => Ok(("true".to_string(), s.kw.loc)),
                _ => Ok((toml_str(&join(args)), args[0].loc)),
            },
        }
    }

    /// The one value of a keyword that takes one.
    fn one<'s>(&mut self, k: Kind, s: &'s Stmt) -> Result<&'s Word, String> {
        let (args, kw) = (&s.args, s.key());
        match args.len() {
            0 => {
                self.err(s.kw.loc, format!("{kw} needs a value"));
                Err(String::new())
            }
            1 => Ok(&args[0]),
            _ => {
                let hint = if k == Kind::Command && kw.starts_with("notify") {
                    "; a user per notify script is not supported by ha-lb (set global_defs script_user)".to_string()
                } else if k == Kind::Command {
                    format!("; quote the whole command: {kw} \"{}\"", join(args))
                } else {
                    String::new()
                };
                self.err(
                    args[1].loc,
                    format!("{kw} takes one value; {:?} is one too many{hint}", args[1].text),
                );
                Err(toml_str(&args[0].text))
            }
        }
    }

    /// `key = value` for a scalar keyword.
    fn scalar(&mut self, blk: &mut Blk, key: &'static str, s: &Stmt) {
        if !self.no_block(s) || !self.once(blk, key, s) {
            return;
        }
        let mut l = Line::default();
        l.push(key, Some(s.kw.loc)).push(" = ", None);
        match self.value(key, s) {
            Ok((v, loc)) => {
                l.push(&v, Some(loc));
            }
            Err(placeholder) => {
                let p = if placeholder.is_empty() { "\"\"".to_string() } else { placeholder };
                l.push(&p, Some(s.kw.loc));
                l.suppress = true;
            }
        }
        self.line(l);
    }

    /// `lvs_sync_daemon INTERFACE VRRP_INSTANCE [id N]` as the TOML inline table.
    fn lvs_sync_daemon(&mut self, s: &Stmt) {
        let mut l = Line::default();
        l.push("lvs_sync_daemon", Some(s.kw.loc)).push(" = { ", None);
        match s.args.as_slice() {
            [iface, inst, rest @ ..] => {
                l.push("interface = ", None).push(&toml_str(&iface.text), Some(iface.loc));
                l.push(", vrrp_instance = ", None).push(&toml_str(&inst.text), Some(inst.loc));
                match rest {
                    [] => {}
                    [k, v] if k.text == "id" => {
                        l.push(", id = ", None).push(&v.text, Some(v.loc));
                    }
                    [k, ..] => {
                        self.err(
                            k.loc,
                            format!(
                                "lvs_sync_daemon option {:?} is not supported by ha-lb (only id N)",
                                k.text
                            ),
                        );
                        l.suppress = true;
                    }
                }
            }
            _ => {
                self.err(s.kw.loc, "lvs_sync_daemon needs INTERFACE VRRP_INSTANCE [id N]");
                l.suppress = true;
            }
        }
        l.push(" }", None);
        self.line(l);
    }

    /// `name = "ARG"` from a block's one argument.
    fn name_arg(&mut self, s: &Stmt, what: &str) {
        let missing = format!("{what} needs a name: {what} NAME {{ … }}");
        self.one_name("name", s.kw.loc, &s.args, &missing, what);
    }

    /// `key = "NAME"` from the one word of `args` (at `at`): none is the error `missing`, a
    /// second one "`usage` takes one name".
    fn one_name(&mut self, key: &str, at: Loc, args: &[Word], missing: &str, usage: &str) {
        let mut l = Line::default();
        l.push(key, Some(at)).push(" = ", None);
        match args {
            [n] => {
                l.push(&toml_str(&n.text), Some(n.loc));
            }
            [] => {
                self.err(at, missing.to_string());
                l.push("\"\"", None);
                l.suppress = true;
            }
            [n, extra, ..] => {
                self.err(
                    extra.loc,
                    format!("{usage} takes one name; {:?} is one too many", extra.text),
                );
                l.push(&toml_str(&n.text), Some(n.loc));
            }
        }
        self.line(l);
    }

    fn list(&mut self, key: &str, at: Loc, elems: Vec<Line>) {
        let mut l = Line::default();
        l.push(key, Some(at)).push(" = [", None);
        self.line(l);
        for mut e in elems {
            let mut line = Line::default();
            line.push("  ", None);
            let offset = line.text.len();
            line.text.push_str(&e.text);
            line.segs.extend(e.segs.drain(..).map(|(c, o)| (c + offset, o)));
            line.suppress = e.suppress;
            line.push(",", None);
            self.line(line);
        }
        let mut l = Line::default();
        l.push("]", Some(at));
        self.line(l);
    }

    // ---- the top level -------------------------------------------------------------------

    fn top(&mut self, stmts: &[Stmt]) {
        const TOP: &[&str] = &[
            "global_defs",
            "vrrp_script",
            "track_file",
            "vrrp_track_file",
            "vrrp_instance",
            "vrrp_sync_group",
            "virtual_server_group",
            "virtual_server",
        ];
        let top = Blk::new("the top level", TOP);
        // global_defs first: it sets defaults for the instances, wherever it is.
        let mut gblk = Blk::new("global_defs", native::GLOBAL_KEYS);
        let mut defaults: Vec<(&'static str, Stmt)> = Vec::new();
        let mut global_lines = Vec::new();
        let saved = std::mem::take(&mut self.out.lines);
        for s in stmts.iter().filter(|s| s.key() == "global_defs") {
            if !s.args.is_empty() {
                self.err(s.args[0].loc, "global_defs takes no arguments");
            }
            let Some(b) = self.need_block(s) else { continue };
            for g in b {
                if let Some((_, to)) = INSTANCE_DEFAULTS.iter().find(|(from, _)| *from == g.key()) {
                    if self.no_block(g) && self.once(&mut gblk, to, g) {
                        defaults.push((to, g.clone()));
                    }
                } else if g.key() == "lvs_sync_daemon" {
                    if self.no_block(g) && self.once(&mut gblk, "lvs_sync_daemon", g) {
                        self.lvs_sync_daemon(g);
                    }
                } else if let Some(k) = gblk.allowed.iter().copied().find(|k| *k == g.key()) {
                    self.scalar(&mut gblk, k, g);
                } else {
                    let mut allowed = gblk.allowed.clone();
                    allowed.extend(INSTANCE_DEFAULTS.iter().map(|(f, _)| *f));
                    let b2 = Blk { what: "global_defs", allowed, seen: HashMap::new() };
                    self.reject(g, &b2);
                }
            }
        }
        let from_instance = self.lvs_sync_daemon_interface(stmts, &gblk);
        global_lines.append(&mut self.out.lines);
        self.out.lines = saved;
        let global_at = stmts.iter().find(|s| s.key() == "global_defs").map(|s| s.kw.loc);
        if let Some(at) = global_at.or(from_instance) {
            self.header("[global]", at);
            self.out.lines.append(&mut global_lines);
        }

        for s in stmts {
            match canonical(s.key()) {
                "global_defs" => {}
                "vrrp_script" => self.named(s, "vrrp_script", native::VRRP_SCRIPT_KEYS),
                "track_file" => self.named(s, "track_file", native::TRACK_FILE_KEYS),
                "vrrp_instance" => self.instance(s, &defaults),
                "vrrp_sync_group" => self.sync_group(s),
                "virtual_server_group" => self.virtual_server_group(s),
                "virtual_server" => self.virtual_server(s),
                _ => self.reject(s, &top),
            }
        }
    }

    /// keepalived 1.x's `lvs_sync_daemon_interface IF` in a vrrp_instance (vrrp_parser.c
    /// vrrp_lvs_syncd_handler, deprecated): global_defs' `lvs_sync_daemon IF INSTANCE`,
    /// unless that is already set (keepalived then ignores it: an error here). Returns where
    /// it was, when it set the global line.
    fn lvs_sync_daemon_interface(&mut self, stmts: &[Stmt], gblk: &Blk) -> Option<Loc> {
        let mut set = gblk.seen.get("lvs_sync_daemon").copied();
        let mut wrote = None;
        for inst in stmts.iter().filter(|s| s.key() == "vrrp_instance") {
            let (Some(b), Some(name)) = (&inst.block, inst.args.first()) else { continue };
            for st in b.iter().filter(|st| st.key() == "lvs_sync_daemon_interface") {
                match (set, st.args.as_slice()) {
                    (Some(first), _) => {
                        let at = self.line_of(first, st.kw.loc);
                        self.err(
                            st.kw.loc,
                            format!("lvs_sync_daemon_interface: connection sync is already set at {at} (keepalived ignores this one); remove it"),
                        )
                    }
                    (None, [iface]) => {
                        self.ctx.warn(
                            st.kw.loc,
                            format!("lvs_sync_daemon_interface is deprecated (keepalived says so too): it means global_defs lvs_sync_daemon {} {}; write that", iface.text, name.text),
                        );
                        let sync = Stmt {
                            kw: Word { text: "lvs_sync_daemon".into(), ..st.kw.clone() },
                            args: vec![iface.clone(), name.clone()],
                            block: None,
                        };
                        self.lvs_sync_daemon(&sync);
                        set = Some(st.kw.loc);
                        wrote = Some(st.kw.loc);
                    }
                    (None, _) => {
                        self.err(st.kw.loc, "lvs_sync_daemon_interface takes one interface name")
                    }
                }
            }
        }
        wrote
    }

    /// `KIND NAME { scalar keywords }` (vrrp_script, track_file).
    fn named(&mut self, s: &Stmt, what: &'static str, keys: &[&'static str]) {
        let Some(b) = self.need_block(s) else { return };
        self.header(&format!("[[{what}]]"), s.kw.loc);
        self.name_arg(s, what);
        let mut blk = Blk::new(what, keys);
        for st in b {
            self.scalar_or_reject(&mut blk, st);
        }
    }

    fn scalar_or_reject(&mut self, blk: &mut Blk, st: &Stmt) {
        let key = canonical(st.key());
        if let Some(k) = blk.allowed.iter().copied().find(|k| *k == key) {
            // `weight N reverse` on trackers.
            if k == "weight" && st.args.len() == 2 && st.args[1].text == "reverse" {
                self.err(st.args[1].loc, "reverse is not supported by ha-lb");
                return;
            }
            self.scalar(blk, k, st);
        } else {
            self.reject(st, blk);
        }
    }

    fn instance(&mut self, s: &Stmt, defaults: &[(&'static str, Stmt)]) {
        let Some(b) = self.need_block(s) else { return };
        self.header("[[vrrp_instance]]", s.kw.loc);
        self.name_arg(s, "vrrp_instance");
        let mut blk = Blk::new("vrrp_instance", native::VRRP_INSTANCE_KEYS);
        let mut lists: Vec<(&'static str, Loc, Vec<Line>)> = Vec::new();
        for st in b {
            let key = canonical(st.key());
            match key {
                "authentication" => {
                    let Some(ab) = self.need_block(st) else { continue };
                    if !self.once(&mut blk, key, st) {
                        continue;
                    }
                    let mut l = Line::default();
                    l.push("authentication", Some(st.kw.loc)).push(" = { ", None);
                    let mut ablk = Blk::new("authentication", &["auth_type", "auth_pass"]);
                    let mut first = true;
                    for a in ab {
                        let k = a.key();
                        let Some(k) = ablk.allowed.iter().copied().find(|x| *x == k) else {
                            self.reject(a, &ablk);
                            continue;
                        };
                        if !self.no_block(a) || !self.once(&mut ablk, k, a) {
                            continue;
                        }
                        let mut a = a.clone();
                        if let [w] = a.args.as_mut_slice() {
                            // vrrp_parser.c vrrp_auth_pass_handler: "Truncating auth_pass to
                            // 8 characters"; peers on keepalived use those 8.
                            if k == "auth_pass" && w.text.len() > 8 && w.text.is_char_boundary(8) {
                                let n = w.text.len();
                                w.text.truncate(8);
                                self.ctx.warn(
                                    w.loc,
                                    format!("auth_pass is {n} bytes: only its first 8 are used (VRRPv2 carries 8; keepalived truncates it the same way)"),
                                );
                            } else if k == "auth_pass" && w.text.len() > 8 {
                                // keepalived cuts inside the character: bytes no text holds.
                                self.err(w.loc, format!("auth_pass is {} bytes and its 8th byte falls inside a character: keepalived sends the first 8 bytes, which ha-lb cannot write as text; use a password of at most 8 ASCII characters on every node", w.text.len()));
                                l.suppress = true;
                                continue;
                            }
                        }
                        let a = &a;
                        match self.value(k, a) {
                            Ok((v, loc)) => {
                                if !first {
                                    l.push(", ", None);
                                }
                                first = false;
                                l.push(k, Some(a.kw.loc)).push(" = ", None).push(&v, Some(loc));
                            }
                            Err(_) => l.suppress = true,
                        }
                    }
                    l.push(" }", None);
                    // Errors about the table itself (a missing key) point at the keyword.
                    l.segs.insert(0, (1, st.kw.loc));
                    self.line(l);
                }
                "unicast_peer"
                | "virtual_ipaddress"
                | "virtual_ipaddress_excluded"
                | "track_interface"
                | "track_script"
                | "track_file" => {
                    let Some(lb) = self.need_block(st) else { continue };
                    if !st.args.is_empty() {
                        self.err(
                            st.args[0].loc,
                            format!("{key} takes its entries in the {{ }} block"),
                        );
                    }
                    let elems = match key {
                        "unicast_peer" => self.peers(lb),
                        "track_interface" | "track_script" | "track_file" => {
                            let inst = s.args.first().map(|w| w.text.as_str()).unwrap_or("");
                            self.trackers(key, lb, inst)
                        }
                        _ => self.vips(lb),
                    };
                    match lists.iter_mut().find(|(k, _, _)| *k == key) {
                        Some((_, _, e)) => e.extend(elems),
                        None => {
                            let k = blk.allowed.iter().copied().find(|k| *k == key).unwrap_or("");
                            blk.seen.insert(key.to_string(), st.kw.loc);
                            lists.push((k, st.kw.loc, elems));
                        }
                    }
                }
                // Read with global_defs (`lvs_sync_daemon_interface`).
                "lvs_sync_daemon_interface" => {}
                // vrrp_parser.c vrrp_preempt_handler: clears nopreempt (the default); kept
                // for old files.
                "preempt" if st.args.is_empty() && st.block.is_none() => {
                    if b.iter().any(|x| x.key() == "nopreempt") {
                        self.err(st.kw.loc, "preempt and nopreempt both set; keepalived takes the later one: keep one");
                    } else {
                        self.ctx.warn(st.kw.loc, "preempt is keepalived's default (and an old spelling): it changes nothing");
                    }
                }
                "unicast_src_ip" if st.block.is_none() && st.args.len() == 1 => {
                    let mut st = st.clone();
                    let a = strip_prefix_len(self.ctx, &st.args[0]).to_string();
                    st.args[0].text = a;
                    self.scalar_or_reject(&mut blk, &st);
                }
                _ => self.scalar_or_reject(&mut blk, st),
            }
        }
        self.derive_state_or_priority(&mut blk, b);
        for (to, g) in defaults {
            if !blk.seen.contains_key(*to) {
                self.scalar(&mut blk, to, g);
            }
        }
        for (k, at, elems) in lists {
            self.list(k, at, elems);
        }
    }

    /// keepalived's defaults of `state` and `priority`, each from the other (vrrp.c
    /// `vrrp_complete_instance`): without `priority`, `state MASTER` means 255 (the address
    /// owner) and anything else 100; without `state`, `priority 255` means MASTER and
    /// anything else BACKUP. The TOML defaults (BACKUP, 100) are the rest of that rule.
    fn derive_state_or_priority(&mut self, blk: &mut Blk, b: &[Stmt]) {
        let derived = match state_and_priority(b) {
            (Some(s), None) => match s.args.as_slice() {
                [w] if is_master(w) => Some(("priority", "255", s, w.loc)),
                _ => None,
            },
            (None, Some(p)) => match p.args.as_slice() {
                [w] if is_255(w) => Some(("state", "MASTER", p, w.loc)),
                _ => None,
            },
            _ => None,
        };
        if let Some((key, value, from, loc)) = derived {
            let word = Word { text: value.to_string(), quoted: false, loc };
            let st = Stmt { kw: from.kw.clone(), args: vec![word], block: None };
            self.scalar(blk, key, &st);
        }
    }

    /// `unicast_peer { ADDR [min_ttl N] [max_ttl N] … }`: one peer per line, as keepalived
    /// (vrrp_data.c alloc_unicast_peer reads the first word as the peer and the rest as its
    /// options). A further word is an error: keepalived does not read it as a peer, so taking
    /// it as one would send adverts to an address the keepalived nodes do not.
    fn peers(&mut self, b: &[Stmt]) -> Vec<Line> {
        let mut out = Vec::new();
        for p in b {
            self.no_block(p);
            if let Some(w) = p.args.first() {
                let msg = if w.text == "min_ttl" || w.text == "max_ttl" {
                    format!("unicast_peer option {} (keepalived drops this peer's adverts whose TTL is outside min_ttl..max_ttl) is not supported by ha-lb", w.text)
                } else {
                    format!(
                        "a unicast_peer line holds one address: keepalived reads only the first word ({}) as the peer and {:?} as an option; put each peer on a line of its own",
                        p.kw.text, w.text
                    )
                };
                self.err(w.loc, msg);
                continue;
            }
            let mut l = Line::default();
            l.push(&toml_str(strip_prefix_len(self.ctx, &p.kw)), Some(p.kw.loc));
            out.push(l);
        }
        out
    }

    /// `virtual_ipaddress { ADDR[/LEN] [options] … }`: one address per line, as keepalived
    /// (vrrp_ipaddress.c reads the first word as the address and the rest as its options).
    /// A further address on the line is an error: keepalived ignores it (an unknown option),
    /// so reading it as a second VIP would add an address the keepalived peer does not have.
    fn vips(&mut self, b: &[Stmt]) -> Vec<Line> {
        // keepalived's options that take a value (vrrp_ipaddress.c): the value is never a
        // further address, even when it looks like one (`peer ADDR`).
        const WITH_VALUE: &[&str] =
            &["brd", "broadcast", "dev", "scope", "label", "peer", "track_group"];
        let mut out = Vec::new();
        for st in b {
            self.no_block(st);
            let mut text = st.kw.text.clone();
            let mut expect_value = false;
            let mut prev: Option<&str> = None;
            for w in &st.args {
                if expect_value
                    && matches!(prev, Some("brd" | "broadcast"))
                    && (w.text == "+" || w.text == "-")
                {
                    match computed_broadcast(&st.kw.text, &w.text) {
                        Ok(Some(b)) => {
                            text.push(' ');
                            text.push_str(&b);
                            expect_value = false;
                            prev = Some(&w.text);
                            continue;
                        }
                        Ok(None) => {}
                        Err(m) => {
                            // Reported; the address alone is read on (no knock-on errors).
                            self.err(w.loc, m);
                            text.clone_from(&st.kw.text);
                            break;
                        }
                    }
                }
                prev = Some(&w.text);
                let is_addr =
                    w.text.split('/').next().is_some_and(|a| a.parse::<std::net::IpAddr>().is_ok());
                if is_addr && !expect_value {
                    self.err(
                        w.loc,
                        format!(
                            "a virtual_ipaddress line holds one address and its options; put {} on a line of its own (keepalived ignores it here)",
                            w.text
                        ),
                    );
                    break;
                }
                text.push(' ');
                text.push_str(&w.text);
                expect_value = !expect_value && WITH_VALUE.contains(&w.text.as_str());
            }
            let mut line = Line::default();
            line.push(&toml_str(&text), Some(st.kw.loc));
            out.push(line);
        }
        out
    }

    /// `track_* { NAME [weight N] … }` of vrrp_instance `inst`.
    fn trackers(&mut self, key: &str, b: &[Stmt], inst: &str) -> Vec<Line> {
        let mut out = Vec::new();
        for st in b {
            self.no_block(st);
            let name = &st.kw;
            let mut l = Line::default();
            if let Some((why, owner)) = self.unweighted.members.get(inst).cloned() {
                if let Some(line) = self.sync_member_tracker(key, st, inst, &why, owner) {
                    if let Some(line) = line {
                        out.push(line);
                    }
                    continue;
                }
            }
            match st.args.as_slice() {
                [] => {
                    l.push(&toml_str(&name.text), Some(name.loc));
                }
                [w, n, rest @ ..] if w.text == "weight" => {
                    if let Some(r) = rest.first() {
                        if r.text == "reverse" {
                            self.err(r.loc, "reverse is not supported by ha-lb");
                        } else {
                            self.err(r.loc, format!("unexpected {:?} after the weight", r.text));
                        }
                        continue;
                    }
                    l.push("{ ", Some(name.loc)).push("name = ", None);
                    l.push(&toml_str(&name.text), Some(name.loc)).push(", weight = ", None);
                    match n.text.parse::<i64>() {
                        Ok(v) => {
                            l.push(&v.to_string(), Some(n.loc));
                        }
                        Err(_) => {
                            self.err(n.loc, format!("weight {:?} is not an integer", n.text));
                            continue;
                        }
                    }
                    l.push(" }", None);
                }
                [w, ..] => {
                    let msg = if KEEPALIVED_KEYWORDS.contains(&w.text.as_str()) {
                        format!("{} is not supported by ha-lb", w.text)
                    } else {
                        format!("unexpected {:?} in {key}; an entry is NAME [weight N]", w.text)
                    };
                    self.err(w.loc, msg);
                    continue;
                }
            }
            out.push(l);
        }
        out
    }

    /// A weighted tracker of a member of a sync group without `sync_group_tracking_weight`,
    /// as keepalived runs it (see [`SyncUnweighted::of`]), with a warning: `Some(Some(l))`
    /// tracked as `l` (weight 0), `Some(None)` not tracked; `None`: not weighted, as written.
    fn sync_member_tracker(
        &mut self,
        key: &str,
        st: &Stmt,
        inst: &str,
        why: &str,
        owner: bool,
    ) -> Option<Option<Line>> {
        let name = &st.kw;
        let explicit = match st.args.as_slice() {
            [] => None,
            [w, n] if w.text == "weight" => Some(n.text.parse::<i64>().ok()?),
            _ => return None,
        };
        let weight = match key {
            "track_interface" => explicit.unwrap_or(0),
            "track_script" => {
                explicit.or(self.unweighted.script_weight.get(&name.text).copied())?
            }
            _ => explicit.or(self.unweighted.file_weight.get(&name.text).copied())?,
        };
        if weight == 0 {
            return None;
        }
        let why = format!("as keepalived does {why}");
        let zero = (key == "track_interface" && !owner) || (key == "track_file" && weight == 1);
        let msg = if zero {
            format!(
                "{key} {} of vrrp_instance {inst}: weight {weight} ignored, {why}: it counts with weight 0 (FAULT while {})",
                name.text,
                if key == "track_interface" { "down" } else { "non-zero" }
            )
        } else {
            format!(
                "{key} {} of vrrp_instance {inst} (weight {weight}) is not tracked, {why}",
                name.text
            )
        };
        self.ctx.warn(name.loc, msg);
        if !zero {
            return Some(None);
        }
        let mut l = Line::default();
        l.push("{ ", Some(name.loc)).push("name = ", None);
        l.push(&toml_str(&name.text), Some(name.loc)).push(", weight = 0 }", None);
        Some(Some(l))
    }

    fn sync_group(&mut self, s: &Stmt) {
        let Some(b) = self.need_block(s) else { return };
        self.header("[[vrrp_sync_group]]", s.kw.loc);
        self.name_arg(s, "vrrp_sync_group");
        let mut blk = Blk::new("vrrp_sync_group", native::SYNC_GROUP_KEYS);
        let mut members: Option<(Loc, Vec<Line>)> = None;
        // Members written without a group block (reported): no "missing group" on top.
        let mut outside = None;
        for st in b {
            if st.key() == "group" {
                let Some(gb) = self.need_block(st) else { continue };
                let (_, m) = members.get_or_insert_with(|| (st.kw.loc, Vec::new()));
                for g in gb {
                    for w in std::iter::once(&g.kw).chain(&g.args) {
                        let mut l = Line::default();
                        l.push(&toml_str(&w.text), Some(w.loc));
                        m.push(l);
                    }
                }
            } else if is_bare_sync_member(st, &blk) {
                // keepalived reads such a word as an unknown keyword, and the group, without
                // members, is dropped ("has no virtual router(s) - removing").
                if outside.is_none() {
                    let bare: Vec<Word> = b
                        .iter()
                        .filter(|x| is_bare_sync_member(x, &blk))
                        .flat_map(|x| std::iter::once(x.kw.clone()).chain(x.args.clone()))
                        .collect();
                    self.err(
                        st.kw.loc,
                        format!("{:?} is not a vrrp_sync_group keyword; members are listed in a group block: group {{ {} }} (keepalived drops a group without one)", st.key(), join(&bare)),
                    );
                }
                outside.get_or_insert(st.kw.loc);
            } else if st.key() == "global_tracking" {
                self.ctx.warn(
                    st.kw.loc,
                    "global_tracking is deprecated (keepalived says so too): it means sync_group_tracking_weight",
                );
                let flag = Stmt {
                    kw: Word { text: "sync_group_tracking_weight".into(), ..st.kw.clone() },
                    ..st.clone()
                };
                self.scalar_or_reject(&mut blk, &flag);
            } else {
                self.scalar_or_reject(&mut blk, st);
            }
        }
        if let Some((at, m)) = members {
            self.list("group", at, m);
        } else if let Some(at) = outside {
            let mut l = Line::default();
            l.push("group = []", Some(at));
            l.suppress = true;
            self.line(l);
        }
    }

    /// `virtual_server_group NAME { ADDR PORT … }`: each line one `members` string, as
    /// written (the reader parses ranges the way keepalived does).
    fn virtual_server_group(&mut self, s: &Stmt) {
        let Some(b) = self.need_block(s) else { return };
        self.header("[[virtual_server_group]]", s.kw.loc);
        self.name_arg(s, "virtual_server_group");
        let mut members = Vec::new();
        for st in b {
            if st.key() == "fwmark" {
                self.err(st.kw.loc, "fwmark in a virtual_server_group is not supported by ha-lb (its data planes match addresses and ports, not firewall marks)");
                continue;
            }
            if st.block.is_some() {
                self.err(
                    st.kw.loc,
                    "a virtual_server_group member is a line ADDR PORT, not a block",
                );
                continue;
            }
            // keepalived up to 2.2 read ADDR-ADDR as ADDR-<the end's first byte> (with a
            // warning) and knows no ADDR/PREFIX; later versions read both as ranges: which
            // one a file meant is not known. (The TOML reader takes both.)
            let a = st.kw.text.as_str();
            if a.contains('/') || a.split_once('-').is_some_and(|(_, e)| e.contains(['.', ':'])) {
                self.err(st.kw.loc, format!("virtual_server_group member {a:?}: keepalived versions read this range differently; write ADDR-LAST (the last byte, or for IPv6 the last group in hex), one line per range"));
                continue;
            }
            let words: Vec<&str> =
                std::iter::once(&st.kw).chain(&st.args).map(|w| w.text.as_str()).collect();
            let mut l = Line::default();
            l.push(&toml_str(&words.join(" ")), Some(st.kw.loc));
            members.push(l);
        }
        self.list("members", s.kw.loc, members);
    }

    /// `ADDR PORT` of a virtual or real server: `address = …` and `port = …` lines.
    fn addr_port(&mut self, s: &Stmt, what: &str, port_required: bool) {
        let Some(a) = s.args.first() else {
            self.err(
                s.kw.loc,
                format!("{what} needs an address and a port: {what} ADDR PORT {{ … }}"),
            );
            let mut l = Line::default();
            l.push("address = \"\"", Some(s.kw.loc));
            l.suppress = true;
            self.line(l);
            return;
        };
        let mut l = Line::default();
        l.push("address", Some(s.kw.loc)).push(" = ", None).push(&toml_str(&a.text), Some(a.loc));
        self.line(l);
        match s.args.get(1) {
            Some(p) => {
                let ps = Stmt { kw: s.kw.clone(), args: vec![p.clone()], block: None };
                let mut l = Line::default();
                l.push("port", Some(s.kw.loc)).push(" = ", None);
                match self.value("port", &ps) {
                    Ok((v, loc)) => {
                        l.push(&v, Some(loc));
                    }
                    Err(ph) => {
                        l.push(&ph, Some(p.loc));
                        l.suppress = true;
                    }
                }
                self.line(l);
            }
            None if port_required => {
                self.err(s.kw.loc, format!("{what} needs a port after the address"));
            }
            None => {}
        }
        if let Some(extra) = s.args.get(2) {
            self.err(extra.loc, format!("unexpected {:?} after {what} ADDR PORT", extra.text));
        }
    }

    fn virtual_server(&mut self, s: &Stmt) {
        if let Some(a) = s.args.first().filter(|a| a.text == "fwmark") {
            self.err(
                a.loc,
                "virtual_server fwmark is not supported by ha-lb (its data planes match addresses and ports, not firewall marks); define a virtual_server per address and port, or a virtual_server_group",
            );
            return;
        }
        let Some(b) = self.need_block(s) else { return };
        self.header("[[virtual_server]]", s.kw.loc);
        match s.args.as_slice() {
            [g, rest @ ..] if g.text == "group" => {
                let missing =
                    "virtual_server group needs the group's name: virtual_server group NAME { … }";
                self.one_name("group", g.loc, rest, missing, "virtual_server group");
            }
            _ => self.addr_port(s, "virtual_server", true),
        }
        let mut blk = Blk::new("virtual_server", native::VIRTUAL_SERVER_KEYS);
        blk.allowed.push("real_server");
        let mut reals = Vec::new();
        for st in b {
            match canonical(st.key()) {
                "real_server" => reals.push(st),
                "sorry_server" => {
                    if !self.no_block(st) || !self.once(&mut blk, "sorry_server", st) {
                        continue;
                    }
                    let mut l = Line::default();
                    l.push("sorry_server", Some(st.kw.loc)).push(" = { ", None);
                    match st.args.as_slice() {
                        [] => {
                            self.err(st.kw.loc, "sorry_server needs an address (and a port)");
                            continue;
                        }
                        [a, rest @ ..] => {
                            l.push("address = ", None).push(&toml_str(&a.text), Some(a.loc));
                            if let Some(p) = rest.first() {
                                match p.text.parse::<i64>() {
                                    Ok(n) => {
                                        l.push(", port = ", None).push(&n.to_string(), Some(p.loc));
                                    }
                                    Err(_) => {
                                        self.err(
                                            p.loc,
                                            format!(
                                                "sorry_server port {:?} is not an integer",
                                                p.text
                                            ),
                                        );
                                        continue;
                                    }
                                }
                            }
                            if let Some(x) = rest.get(1) {
                                self.err(
                                    x.loc,
                                    format!("unexpected {:?} after sorry_server ADDR PORT", x.text),
                                );
                                continue;
                            }
                        }
                    }
                    l.push(" }", None);
                    l.segs.insert(0, (1, st.kw.loc));
                    self.line(l);
                }
                "protocol" => {
                    // keepalived compares with strcasecmp (check_parser.c proto_handler).
                    let mut st = st.clone();
                    if let [w] = st.args.as_mut_slice() {
                        if ["TCP", "UDP"].iter().any(|p| w.text.eq_ignore_ascii_case(p)) {
                            w.text.make_ascii_uppercase();
                        }
                    }
                    self.scalar_or_reject(&mut blk, &st);
                }
                "persistence_timeout" if st.args.is_empty() => {
                    self.err(
                        st.kw.loc,
                        "persistence_timeout needs a value (ha-lb does not assume keepalived's 360)",
                    );
                }
                "persistence_timeout" if is_zero(st) => {
                    // check_parser.c pto_handler: 0 is "invalid" and ignored: no persistence,
                    // unless a granularity brings keepalived's default timeout (below).
                    let msg = if b.iter().any(|g| g.key() == "persistence_granularity") {
                        "persistence_timeout 0 is ignored (as keepalived does): with persistence_granularity, keepalived's default 360 s applies; write the timeout you mean"
                    } else {
                        "persistence_timeout 0 means no persistence (keepalived ignores it); remove it"
                    };
                    self.ctx.warn(st.args[0].loc, msg);
                }
                _ => self.scalar_or_reject(&mut blk, st),
            }
        }
        // keepalived (check_parser.c pgr_handler): persistence_granularity without a
        // persistence_timeout means keepalived's default timeout, 360 s.
        let granularity = b.iter().find(|st| st.key() == "persistence_granularity");
        if let Some(g) = granularity.filter(|g| g.block.is_none()) {
            if !b.iter().any(|st| st.key() == "persistence_timeout" && !is_zero(st)) {
                let word = Word { text: "360".to_string(), quoted: false, loc: g.kw.loc };
                let st = Stmt { kw: g.kw.clone(), args: vec![word], block: None };
                self.scalar(&mut blk, "persistence_timeout", &st);
            }
        }
        for r in reals {
            self.real_server(r);
        }
    }

    fn real_server(&mut self, s: &Stmt) {
        let Some(b) = self.need_block(s) else { return };
        self.header("[[virtual_server.real_server]]", s.kw.loc);
        self.addr_port(s, "real_server", false);
        let mut blk = Blk::new("real_server", native::REAL_SERVER_KEYS);
        let mut checks: Vec<&Stmt> = Vec::new();
        for st in b {
            if native::CHECK_BLOCKS.contains(&st.key()) {
                if let Some(prev) = checks.iter().find(|c| c.key() == st.key()) {
                    let line = self.line_of(prev.kw.loc, st.kw.loc);
                    self.err(
                        st.kw.loc,
                        format!("real_server has a second {} (first at {line}); ha-lb allows one check per real server", st.key()),
                    );
                } else {
                    checks.push(st);
                }
            } else {
                self.scalar_or_reject(&mut blk, st);
            }
        }
        for c in checks {
            self.check(c);
        }
    }

    fn check(&mut self, s: &Stmt) {
        let Some(b) = self.need_block(s) else { return };
        if let Some(a) = s.args.first() {
            self.err(a.loc, format!("{} takes no arguments", s.key()));
        }
        let block: &'static str =
            native::CHECK_BLOCKS.iter().copied().find(|c| *c == s.key()).unwrap_or("TCP_CHECK");
        self.header(&format!("[virtual_server.real_server.{block}]"), s.kw.loc);
        let keys = native::check_keys(block);
        let mut blk = Blk::new(block, &keys);
        let mut urls: Vec<Line> = Vec::new();
        let mut url_at = None;
        for st in b {
            if st.key() == "url" && blk.allowed.contains(&"url") {
                url_at.get_or_insert(st.kw.loc);
                if let Some(u) = self.url(st) {
                    urls.push(u);
                }
            } else {
                self.scalar_or_reject(&mut blk, st);
            }
        }
        if let Some(at) = url_at {
            self.list("url", at, urls);
        }
    }

    /// `url { path P  digest D  status_code C… }` → an inline table.
    fn url(&mut self, s: &Stmt) -> Option<Line> {
        let b = self.need_block(s)?;
        let mut blk = Blk::new("url", &["path", "digest", "status_code"]);
        let mut l = Line::default();
        l.push("{ ", Some(s.kw.loc));
        let mut first = true;
        for st in b {
            let Some(k) = blk.allowed.iter().copied().find(|k| *k == st.key()) else {
                self.reject(st, &blk);
                continue;
            };
            if !self.no_block(st) || !self.once(&mut blk, k, st) {
                continue;
            }
            let val = if k == "status_code" {
                if st.args.is_empty() {
                    self.err(st.kw.loc, "status_code needs a value");
                    continue;
                }
                let mut v = Line::default();
                v.push("[", None);
                for (i, w) in st.args.iter().enumerate() {
                    if i > 0 {
                        v.push(", ", None);
                    }
                    match w.text.parse::<i64>() {
                        Ok(n) => v.push(&n.to_string(), Some(w.loc)),
                        Err(_) => v.push(&toml_str(&w.text), Some(w.loc)),
                    };
                }
                v.push("]", None);
                v
            } else {
                match self.value(k, st) {
                    Ok((v, loc)) => {
                        let mut line = Line::default();
                        line.push(&v, Some(loc));
                        line
                    }
                    Err(_) => {
                        l.suppress = true;
                        continue;
                    }
                }
            };
            if !first {
                l.push(", ", None);
            }
            first = false;
            l.push(k, Some(st.kw.loc)).push(" = ", None);
            let offset = l.text.chars().count();
            l.text.push_str(&val.text);
            l.segs.extend(val.segs.into_iter().map(|(c, o)| (c + offset, o)));
        }
        l.push(" }", None);
        Some(l)
    }
}

/// `brd +` / `brd -` of the VIP `addr` (`A.B.C.D[/LEN]`), as keepalived computes them
/// (vrrp_ipaddress.c): the address with the host bits all set (`+`) or all clear (`-`).
/// keepalived sets no broadcast for a prefix longer than 30 (and says so): an error here,
/// since the line asks for one. `None`: not an IPv4 address, left to the VIP's own checks.
fn computed_broadcast(addr: &str, sign: &str) -> Result<Option<String>, String> {
    let (a, len) = addr.split_once('/').unwrap_or((addr, "32"));
    let (Ok(a), Ok(len)) = (a.parse::<std::net::Ipv4Addr>(), len.parse::<u32>()) else {
        return Ok(None);
    };
    if len > 30 {
        return Err(format!(
            "brd {sign} needs a prefix of 30 or less (keepalived sets no broadcast for /{len}); remove it"
        ));
    }
    let host = u32::MAX >> len;
    let a = u32::from(a);
    let b = if sign == "+" { a | host } else { a & !host };
    Ok(Some(std::net::Ipv4Addr::from(b).to_string()))
}

/// A statement of a `vrrp_sync_group` that is no keyword (of the group, of keepalived or of
/// ha-lb) and has no block: a member name written outside `group { }`.
fn is_bare_sync_member(st: &Stmt, blk: &Blk) -> bool {
    st.block.is_none()
        && !blk.allowed.contains(&st.key())
        && !KEEPALIVED_KEYWORDS.contains(&st.key())
        && !is_halb_key(st.key())
}

/// An address written with a prefix or range where keepalived reads a plain one
/// (`unicast_src_ip`, `unicast_peer`: `inet_stosockaddr` cuts at `/` or `-`): the address,
/// with a warning.
fn strip_prefix_len<'w>(ctx: &mut Ctx, w: &'w Word) -> &'w str {
    match w.text.split_once(['/', '-']) {
        Some((a, _)) if a.parse::<std::net::IpAddr>().is_ok() => {
            ctx.warn(
                w.loc,
                format!(
                    "{:?}: keepalived reads the address {a} and ignores the rest; write {a}",
                    w.text
                ),
            );
            a
        }
        _ => &w.text,
    }
}

/// `KEYWORD 0`.
fn is_zero(st: &Stmt) -> bool {
    matches!(st.args.as_slice(), [w] if !w.quoted && w.text.parse::<u64>() == Ok(0))
}

fn join(words: &[Word]) -> String {
    words.iter().map(|w| w.text.as_str()).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::*;
    use std::time::Duration;

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        parse_str(text, Path::new("k.conf"))
    }

    #[test]
    fn sh_port_and_mh_port_hash_the_client_port_with_their_scheduler_only() {
        let vs = |algo: &str, flag: &str| {
            format!(
                "{INST} priority 150\n}}\nvirtual_server 192.0.2.10 80 {{\n lvs_sched {algo}\n {flag}\n \
                 real_server 10.0.0.1 80 {{\n }}\n}}\n"
            )
        };
        for (algo, flag) in [("sh", "sh-port"), ("mh", "mh-port")] {
            let c = parse(&vs(algo, flag)).unwrap();
            assert!(c.virtual_servers[0].hash_port, "{algo} {flag}");
            // convert writes it back under keepalived's name, and it reads back the same.
            let toml = crate::config::to_toml::to_toml(&c);
            assert!(toml.contains(&format!("{flag} = true")), "{toml}");
            let again = crate::config::parse_str(&toml, Path::new("c.toml")).unwrap();
            assert!(again.virtual_servers[0].hash_port);
        }
        assert!(!parse(&vs("sh", "")).unwrap().virtual_servers[0].hash_port);
        let e = errors(&vs("rr", "mh-port"));
        assert!(e.iter().any(|e| e.ends_with(":11:2: mh-port needs lb_algo \"mh\"")), "{e:?}");
    }

    #[test]
    fn drop_unsupported_leaves_out_only_what_does_not_decide_failover() {
        let dir = std::env::temp_dir().join(format!("hlb-drop-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("keepalived.conf");
        let text = format!(
            "global_defs {{\n notification_email {{\n  a@example.com\n }}\n smtp_server 192.0.2.1\n \
             vrrp_strict\n router_id LB1\n}}\n{INST} priority 150\n}}\n"
        );
        std::fs::write(&f, &text).unwrap();
        // Refused as ever without the option, saying how to get past it.
        let e = load(&f).unwrap_err().to_string();
        assert!(
            e.contains(":2:2: notification_email is not supported by ha-lb; use notify scripts (`ha-lb convert --drop-unsupported` leaves it out)"),
            "{e}"
        );
        let (c, dropped) = load_dropping_unsupported(&f).unwrap();
        let d: Vec<String> = dropped.iter().map(|e| e.to_string()).collect();
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(d[0].ends_with(":2:2: notification_email left out: no e-mail alerts (ha-lb has none; notify scripts can send them)"), "{d:?}");
        assert!(d[1].contains(":5:2: smtp_server left out"), "{d:?}");
        assert!(d[2].contains(":6:2: vrrp_strict left out: no strict mode"), "{d:?}");
        // Everything else is there.
        assert_eq!(c.config.global.router_id.as_deref(), Some("LB1"));
        assert_eq!(c.config.vrrp_instances[0].priority, 150);
        // vrrp_strict changes what keepalived does with authentication: not left out then.
        std::fs::write(
            &f,
            format!(
                "global_defs {{\n vrrp_strict\n}}\n{INST} authentication {{\n  auth_type PASS\n  \
                 auth_pass 1111\n }}\n}}\n"
            ),
        )
        .unwrap();
        let e = load_dropping_unsupported(&f).unwrap_err().to_string();
        assert!(
            e.contains(":2:2: vrrp_strict cannot just be left out: keepalived's strict mode ignores authentication in vrrp_instance VI_1"),
            "{e}"
        );
        // Not droppable: still an error with the option.
        std::fs::write(&f, format!("{INST} track_bfd {{\n  b\n }}\n}}\n")).unwrap();
        let e = load_dropping_unsupported(&f).unwrap_err().to_string();
        assert!(e.contains("track_bfd"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn errors(text: &str) -> Vec<String> {
        parse(text).unwrap_err().iter().map(|e| e.to_string()).collect()
    }

    /// Virtual servers alone run on kernel IPVS (appended: line numbers stay).
    const IPVS: &str = "global_defs {\n dataplane ipvs\n}\n";

    const INST: &str = "vrrp_instance VI_1 {\n interface eth0\n virtual_router_id 51\n virtual_ipaddress {\n 192.0.2.10/24\n }\n";

    #[test]
    fn virtual_server_group_reads_as_keepalived_writes_it() {
        let text = format!(
            "{IPVS}virtual_server_group web {{\n 192.0.2.10 80\n 192.0.2.20-21 443\n}}\n\
             virtual_server group web {{\n protocol TCP\n real_server 10.0.0.1 8080 {{\n  TCP_CHECK {{\n  }}\n }}\n}}\n"
        );
        let c = parse(&text).unwrap();
        let keys: Vec<String> = c.virtual_servers.iter().map(|v| v.key().to_string()).collect();
        assert_eq!(keys, ["192.0.2.10:80 TCP", "192.0.2.20:443 TCP", "192.0.2.21:443 TCP"]);
        assert_eq!(c.virtual_server_groups[0].name, "web");
        // convert writes the group once and reads back the same.
        let toml = crate::config::to_toml::to_toml(&c);
        assert_eq!(crate::config::parse_str(&toml, Path::new("c.toml")).unwrap(), c);
        // Errors land on keepalived's lines.
        let e = errors(&text.replace("192.0.2.20-21 443", "192.0.2.20-19 443\n fwmark 7"));
        assert_eq!(
            e,
            [
                "k.conf:6:2: member \"192.0.2.20-19 443\" range \"192.0.2.20-19\" ends below its start",
                "k.conf:7:2: fwmark in a virtual_server_group is not supported by ha-lb (its data planes match addresses and ports, not firewall marks)",
            ]
        );
        // Without protocol, keepalived's UDP, as for a single virtual_server.
        let udp =
            parse_str_with_warnings(&text.replace(" protocol TCP\n", ""), Path::new("k.conf"))
                .unwrap();
        assert!(udp.config.virtual_servers.iter().all(|v| v.protocol == Protocol::Udp));
        assert!(
            udp.warnings[0].to_string().starts_with("k.conf:8:1: virtual_server without protocol"),
            "{:?}",
            udp.warnings
        );
        let e = errors(
            &text.replace("192.0.2.20-21 443", "192.0.2.20-192.0.2.21 443\n 192.0.2.16/28 80"),
        );
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].starts_with("k.conf:6:2: virtual_server_group member \"192.0.2.20-192.0.2.21\": keepalived versions read this range differently"), "{e:?}");
        let e = errors(&text.replace("server group web", "server group web x"));
        assert!(
            e[0].starts_with(
                "k.conf:8:26: virtual_server group takes one name; \"x\" is one too many"
            ),
            "{e:?}"
        );
        let e = errors(&text.replace("server group web", "server group webb"));
        assert!(e[0].starts_with("k.conf:8:22: unknown virtual_server_group \"webb\""), "{e:?}");
        let e = errors(&text.replace("real_server 10.0.0.1 8080", "real_server 10.0.0.1"));
        assert!(e[0].starts_with("k.conf:10:2: real_server needs a port"), "{e:?}");
    }

    #[test]
    fn a_unicast_peer_line_holds_one_peer_as_in_keepalived() {
        let peers = |p: &str| format!("{INST} unicast_peer {{\n {p}\n }}\n}}\n");
        let c = parse(&peers("10.0.0.2\n 10.0.0.3")).unwrap();
        assert_eq!(c.vrrp_instances[0].unicast_peer.len(), 2);
        let e = errors(&peers("10.0.0.2 10.0.0.3"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("k.conf:8:11: a unicast_peer line holds one address: keepalived reads only the first word (10.0.0.2)"),
            "{e:?}"
        );
        let e = errors(&peers("10.0.0.2 min_ttl 250"));
        assert!(e[0].contains("unicast_peer option min_ttl"), "{e:?}");
        assert!(e[0].ends_with("is not supported by ha-lb"), "{e:?}");
    }

    #[test]
    fn vip_option_values_are_not_further_addresses_and_brd_sign_is_computed() {
        let vip = |v: &str| {
            format!("vrrp_instance VI_1 {{\n interface eth0\n virtual_router_id 51\n virtual_ipaddress {{\n {v}\n }}\n}}\n")
        };
        // keepalived uses the peer (point-to-point): no hint to write it as a VIP.
        let e = errors(&vip("192.0.2.10 peer 192.0.2.11/24"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("option \"peer\" is not supported"), "{e:?}");
        let e = errors(&vip("192.0.2.10/24 track_group 192.0.2.11"));
        assert!(!e.iter().any(|m| m.contains("line of its own")), "{e:?}");
        let c = parse(&vip("192.0.2.10/24 brd + dev eth0")).unwrap();
        let v = &c.vrrp_instances[0].virtual_ipaddress[0];
        assert_eq!(v.broadcast, Some("192.0.2.255".parse().unwrap()));
        let c = parse(&vip("192.0.2.10/24 broadcast -")).unwrap();
        let v = &c.vrrp_instances[0].virtual_ipaddress[0];
        assert_eq!(v.broadcast, Some("192.0.2.0".parse().unwrap()));
        let e = errors(&vip("192.0.2.10 brd +"));
        assert_eq!(
            e,
            ["k.conf:5:17: brd + needs a prefix of 30 or less (keepalived sets no broadcast for /32); remove it"]
        );
    }

    #[test]
    fn a_virtual_server_without_protocol_is_udp_as_in_keepalived() {
        let vs = |p: &str| {
            format!(
                "virtual_server 192.0.2.10 53 {{\n{p} real_server 10.0.0.1 53 {{\n }}\n}}\n{IPVS}"
            )
        };
        let (c, w) = warnings(&vs(""));
        assert_eq!(c.virtual_servers[0].protocol, Protocol::Udp);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with(
                "k.conf:1:1: virtual_server without protocol: keepalived's default, UDP"
            ),
            "{w:?}"
        );
        let (c, w) = warnings(&vs(" protocol TCP\n"));
        assert_eq!(c.virtual_servers[0].protocol, Protocol::Tcp);
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn parameters_are_refused_anywhere_quoted_too_and_a_lone_dollar_is_literal() {
        let script = |s: &str| format!("vrrp_script chk {{\n script {s}\n}}\n{INST}}}\n");
        for s in [
            "\"/bin/check $_INSTANCE\"",
            "/etc/${_PWD}/x",
            "a$_RANDOM",
            "\"${_RANDOM 1 9}\"",
            "$X=1",
        ] {
            let e = errors(&script(s));
            // (The line is dropped, so the block also misses its script.)
            let at = "parameter substitution (";
            assert!(
                e.iter().any(|m| m.contains(at) && m.contains(") is not supported by ha-lb")),
                "{s}: {e:?}"
            );
        }
        let e = errors(&script("/etc/${_PWD}/x"));
        assert!(
            e.iter().any(|m| m.starts_with("k.conf:2:14: parameter substitution (${_PWD})")),
            "{e:?}"
        );
        for s in ["\"/bin/echo $$ $1 a$\"", "$1"] {
            let c = parse(&script(s)).unwrap();
            assert!(c.vrrp_scripts[0].script.argv.iter().any(|a| a.contains('$')), "{s}");
        }
    }

    /// Found by trying real-world files: a `}` missing before the next top-level block said
    /// "virtual_server is not supported" / "unknown keyword".
    #[test]
    fn a_top_level_block_inside_another_points_at_the_missing_brace() {
        let e = errors(&format!(
            "{IPVS}{INST}\nvirtual_server 192.0.2.10 80 {{\n real_server 10.0.0.1 80 {{\n }}\n}}\n"
        ));
        assert!(
            e.iter().any(|e| e.contains("virtual_server is a top-level block, here inside a vrrp_instance: a `}` is probably missing above it")),
            "{e:?}"
        );
    }

    /// Found by trying real-world files: what keepalived reads one way, read the same way.
    #[test]
    fn real_world_habits_read_as_keepalived_reads_them() {
        let warned = |text: &str| {
            let l = parse_str_with_warnings(text, Path::new("k.conf"))
                .unwrap_or_else(|e| panic!("{e}"));
            (l.config, l.warnings.iter().map(|w| w.to_string()).collect::<Vec<_>>())
        };
        // A prefix on unicast addresses: keepalived cuts it off.
        let (c, w) = warned(&format!(
            "{INST} unicast_src_ip 192.0.2.1/24\n unicast_peer {{\n 192.0.2.2/24\n }}\n}}\n"
        ));
        let i = &c.vrrp_instances[0];
        assert_eq!(i.unicast_src_ip, Some("192.0.2.1".parse().unwrap()));
        assert_eq!(i.unicast_peer, ["192.0.2.2".parse::<std::net::IpAddr>().unwrap()]);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("keepalived reads the address 192.0.2.1 and ignores the rest"),
            "{w:?}"
        );
        // preempt: the default, an old spelling.
        let (c, w) = warned(&format!("{INST} preempt\n}}\n"));
        assert!(!c.vrrp_instances[0].nopreempt);
        assert!(w[0].contains("preempt is keepalived's default"), "{w:?}");
        assert!(errors(&format!("{INST} preempt\n nopreempt\n}}\n"))[0]
            .contains("preempt and nopreempt both set"));
        // A byte-order mark: ignored, said.
        let (_, w) = warned(&format!("\u{feff}{INST}}}\n"));
        assert!(
            w[0].starts_with("k.conf:1:1: the file starts with a UTF-8 byte-order mark"),
            "{w:?}"
        );
        // Non-ASCII white space stays in the word, as keepalived splits on ASCII only: the
        // value is not what it looks like, so it is refused, not repaired.
        let e = errors(&format!("{INST} state MASTER\u{3000}\u{3000}#comment\n}}\n"));
        assert!(e.iter().any(|e| e.contains("state")), "{e:?}");
        let e = errors(&format!("{INST} priority\u{a0}150\n}}\n"));
        assert!(!e.is_empty());
    }

    #[test]
    fn comments_quotes_and_one_line_blocks() {
        let c = parse(&format!(
            "! comment\n# comment\n{INST} authentication {{ auth_type PASS\n auth_pass \"a b#c!\" }} # trailing\n notify_master \"/bin/x '{{ y }}'\"\n}}\n"
        ))
        .unwrap();
        let i = &c.vrrp_instances[0];
        assert_eq!(i.authentication, Some(Authentication::Pass("a b#c!".into())));
        assert_eq!(i.notify.notify_master.as_ref().unwrap().argv, ["/bin/x", "{ y }"]);
    }

    #[test]
    fn a_block_may_open_on_the_next_line() {
        let c = parse(&format!("vrrp_script chk\n{{\n script /bin/true\n}}\n{INST}}}\n")).unwrap();
        assert_eq!(c.vrrp_scripts[0].name, "chk");
    }

    /// A checkers-only keepalived.conf (its VRRP elsewhere) is refused by `check` as by `run`
    /// on the eBPF planes, saying what to write; with `dataplane ipvs` it loads.
    #[test]
    fn virtual_servers_without_an_instance_need_ipvs() {
        let vs = "virtual_server 192.0.2.10 80 {\n real_server 10.0.0.1 80 {\n }\n}\n";
        assert_eq!(
            errors(vs),
            ["k.conf:1:1: dataplane \"xdp\" needs a vrrp_instance: the forwarding program goes on its interface and its VIPs' devices; for virtual servers without VRRP use dataplane \"ipvs\" (in a keepalived.conf: `dataplane ipvs` in global_defs)"]
        );
        parse(&format!("{vs}{IPVS}")).unwrap();
        // Other errors first: only those.
        let bad = "virtual_server 192.0.2.10 80 {\n lb_algo nope\n}\n";
        assert!(
            errors(bad).iter().all(|e| !e.contains("needs a vrrp_instance")),
            "{:?}",
            errors(bad)
        );
    }

    #[test]
    fn dont_track_primary_is_read_and_converted() {
        let c = parse(&format!("{INST} dont_track_primary\n}}\n")).unwrap();
        assert!(c.vrrp_instances[0].dont_track_primary);
        let toml = crate::config::to_toml::to_toml(&c);
        assert!(toml.contains("dont_track_primary = true"), "{toml}");
        assert!(!parse(&format!("{INST}}}\n")).unwrap().vrrp_instances[0].dont_track_primary);
    }

    #[test]
    fn flags_take_an_optional_boolean_and_seconds_any_decimal() {
        let c = parse(&format!("{INST} nopreempt off\n preempt_delay .5\n advert_int 2\n}}\n"))
            .unwrap();
        let i = &c.vrrp_instances[0];
        assert!(!i.nopreempt);
        assert_eq!(i.preempt_delay, Duration::from_millis(500));
        assert_eq!(
            errors(&format!("{INST} nopreempt maybe\n preempt_delay -1\n}}\n")),
            [
                "k.conf:7:12: nopreempt is a flag: write nopreempt alone, or nopreempt true / false, not \"maybe\"",
                "k.conf:8:16: preempt_delay \"-1\" is not a number of seconds",
            ]
        );
    }

    #[test]
    fn keywords_set_twice_and_blocks_in_the_wrong_place_are_errors() {
        assert_eq!(
            errors(&format!("{INST} priority 100\n priority 101\n state {{ }}\n}}\n")),
            [
                "k.conf:8:2: priority is set twice in this vrrp_instance (first at line 7)",
                "k.conf:9:2: state does not take a { } block",
            ]
        );
    }

    #[test]
    fn a_keyword_of_another_block_is_unknown_here_not_unsupported() {
        let e = errors(&format!("{INST} lb_algo rr\n}}\n"));
        assert!(
            e[0].starts_with("k.conf:7:2: unknown keyword \"lb_algo\" in vrrp_instance;"),
            "{e:?}"
        );
    }

    #[test]
    fn global_garp_defaults_apply_to_instances_that_do_not_set_their_own() {
        let c = parse(&format!(
            "global_defs {{\n vrrp_garp_master_delay 2\n}}\n{INST}}}\n{}",
            INST.replace("VI_1", "VI_2").replace(" 51", " 52").replace(".10/", ".11/")
                + " garp_master_delay 3\n}\n"
        ))
        .unwrap();
        assert_eq!(c.vrrp_instances[0].garp.master_delay, Duration::from_secs(2));
        assert_eq!(c.vrrp_instances[1].garp.master_delay, Duration::from_secs(3));
    }

    #[test]
    fn messages_that_cite_a_line_cite_the_keepalived_line() {
        let e = errors(&format!("\n\n{INST}}}\n{}", INST.replace(" 51", " 52") + "}\n"));
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(e[0], "k.conf:10:15: vrrp_instance \"VI_1\" is already defined at line 3");
        assert!(e[1] == "k.conf:14:2: 192.0.2.10 is listed twice in this vrrp_instance (first at line 7)",
            "{e:?}");
    }

    #[test]
    fn a_keepalived_keyword_ha_lb_takes_elsewhere_says_what_to_use() {
        let e = errors(&format!("virtual_server 192.0.2.10 80 {{\n virtualhost www\n}}\n{IPVS}"));
        assert_eq!(
            e,
            ["k.conf:2:2: virtualhost is not supported by ha-lb; set virtualhost in each HTTP_GET / SSL_GET"]
        );
    }

    #[test]
    fn state_and_priority_each_default_from_the_other_as_in_keepalived() {
        let inst =
            |extra: &str| parse(&format!("{INST}{extra}}}\n")).unwrap().vrrp_instances[0].clone();
        // vrrp.c vrrp_complete_instance: no priority → 255 for MASTER, else 100.
        let i = inst(" state MASTER\n");
        assert_eq!((i.state, i.priority), (InitialState::Master, 255));
        let i = inst(" state BACKUP\n");
        assert_eq!((i.state, i.priority), (InitialState::Backup, 100));
        // No state → MASTER when the priority is 255, else BACKUP.
        let i = inst(" priority 255\n");
        assert_eq!((i.state, i.priority), (InitialState::Master, 255));
        let i = inst(" priority 254\n");
        assert_eq!((i.state, i.priority), (InitialState::Backup, 254));
        let i = inst("");
        assert_eq!((i.state, i.priority), (InitialState::Backup, 100));
        // Both written: no derivation; the explicit contradiction stays an error.
        let i = inst(" state MASTER\n priority 150\n");
        assert_eq!((i.state, i.priority), (InitialState::Master, 150));
        assert_eq!(
            errors(&format!("{INST} state BACKUP\n priority 255\n}}\n")),
            ["k.conf:8:11: priority 255 means address owner and needs state = \"MASTER\""]
        );
    }

    #[test]
    fn comments_start_at_any_unquoted_bang_or_hash_as_in_keepalived() {
        // parser.c decomment(): the line ends at the first `!` or `#` outside "…", also
        // inside a word; `\!` and `\#` are a literal `!` and `#`.
        let c = parse(&format!(
            "global_defs {{\n router_id LB1#primary\n}}\n{INST} authentication {{\n auth_type PASS\n auth_pass Secr3t!x\n }}\n notify_master \"/bin/n #1!\"\n}}\n"
        ))
        .unwrap();
        assert_eq!(c.global.router_id.as_deref(), Some("LB1"));
        let i = &c.vrrp_instances[0];
        assert_eq!(i.authentication, Some(Authentication::Pass("Secr3t".into())));
        assert_eq!(i.notify.notify_master.as_ref().unwrap().argv, ["/bin/n", "#1!"]);
        let c = parse(&format!(
            "{INST} authentication {{\n auth_type PASS\n auth_pass a\\#b\\!c#d\n }}\n}}\n"
        ))
        .unwrap();
        assert_eq!(c.vrrp_instances[0].authentication, Some(Authentication::Pass("a#b!c".into())));
        // A comment hides what follows it, a closing brace included.
        assert_eq!(
            errors(&format!("{INST} nopreempt!}}\n")),
            ["k.conf:1:20: this '{' is never closed"]
        );
    }

    #[test]
    fn a_semicolon_is_part_of_a_word_as_in_keepalived_and_reported_at_a_word_end() {
        // alloc_strvec splits on white space and quotes only.
        assert_eq!(
            errors(&format!("{INST} track_interface {{\n eth1; eth2\n }}\n}}\n")),
            [
                "k.conf:8:6: ';' does not end a statement in keepalived.conf (keepalived reads \"eth1;\" as one word); write one statement per line, or quote the word",
                "k.conf:8:8: unexpected \"eth2\" in track_interface; an entry is NAME [weight N]",
            ]
        );
        let c = parse(&format!("{INST} notify_master \"/bin/a;\"\n}}\n")).unwrap();
        assert_eq!(c.vrrp_instances[0].notify.notify_master.as_ref().unwrap().argv, ["/bin/a;"]);
    }

    #[test]
    fn global_garp_and_gna_intervals_apply_to_every_instance() {
        let c = parse(&format!(
            "global_defs {{\n vrrp_garp_interval 0.001\n vrrp_gna_interval 2\n}}\n{INST}}}\n"
        ))
        .unwrap();
        assert_eq!(c.global.vrrp_garp_interval, Duration::from_millis(1));
        assert_eq!(c.global.vrrp_gna_interval, Duration::from_secs(2));
        let g = &c.vrrp_instances[0].garp;
        assert_eq!(
            (g.interval, g.gna_interval),
            (Duration::from_millis(1), Duration::from_secs(2))
        );
        let g = &parse(&format!("{INST}}}\n")).unwrap().vrrp_instances[0].garp;
        assert_eq!((g.interval, g.gna_interval), (Duration::ZERO, Duration::ZERO));
        assert_eq!(
            errors(&format!("global_defs {{\n vrrp_garp_interval x\n}}\n{INST}}}\n")),
            ["k.conf:2:21: vrrp_garp_interval \"x\" is not a number of seconds"]
        );
    }

    #[test]
    fn a_second_address_on_a_vip_line_is_an_error_not_a_second_vip() {
        // keepalived reads one address per line and ignores the rest of the line
        // (vrrp_ipaddress.c; keepalived 2.2.7 advertised one address for this, see
        // tests/fixtures/keepalived/v2.hex).
        let text = INST.replace(
            " 192.0.2.10/24\n",
            " 192.0.2.20/24 dev eth0 192.0.2.21\n 192.0.2.22 label eth0:1\n",
        );
        assert_eq!(
            errors(&format!("{text}}}\n")),
            ["k.conf:5:25: a virtual_ipaddress line holds one address and its options; put 192.0.2.21 on a line of its own (keepalived ignores it here)"]
        );
    }

    #[test]
    fn keepalived_keywords_ha_lb_does_not_take_in_that_block_are_unsupported_not_unknown() {
        let e = errors(&format!(
            "SSL {{\n password x\n}}\n{INST}}}\nvrrp_sync_group G {{\n group {{\n VI_1\n }}\n track_script {{\n chk\n }}\n track_interface {{\n eth1\n }}\n track_file {{\n f\n }}\n}}\n\
             virtual_server 192.0.2.10 80 {{\n real_server 10.0.0.1 80 {{\n lvs_method DR\n alpha\n }}\n}}\n"
        ));
        assert_eq!(
            e,
            [
                "k.conf:1:1: SSL is not supported by ha-lb; SSL_GET checks present no client certificate and accept any server certificate",
                "k.conf:15:2: track_script in a vrrp_sync_group is not supported by ha-lb; put it in each member vrrp_instance",
                "k.conf:18:2: track_interface in a vrrp_sync_group is not supported by ha-lb; put it in each member vrrp_instance",
                "k.conf:21:2: track_file in a vrrp_sync_group is not supported by ha-lb; put it in each member vrrp_instance",
                "k.conf:27:2: lvs_method in a real_server is not supported by ha-lb; a real server is forwarded by its virtual_server's lb_kind",
                "k.conf:28:2: alpha in a real_server is not supported by ha-lb; set alpha on the virtual_server",
            ]
        );
    }

    #[test]
    fn protocol_is_case_insensitive_as_in_keepalived() {
        let vs = |p: &str| {
            parse(&format!("virtual_server 192.0.2.10 53 {{\n protocol {p}\n}}\n{IPVS}"))
                .unwrap()
                .virtual_servers[0]
                .protocol
        };
        assert_eq!(vs("tcp"), Protocol::Tcp);
        assert_eq!(vs("Udp"), Protocol::Udp);
        assert_eq!(vs("UDP"), Protocol::Udp);
    }

    #[test]
    fn persistence_granularity_alone_means_keepalived_360_second_timeout() {
        // check_parser.c pgr_handler: no persistence_timeout → 360 s.
        let vs = |extra: &str| {
            parse(&format!(
                "virtual_server 192.0.2.10 80 {{\n persistence_granularity 255.255.255.0\n{extra}}}\n{IPVS}"
            ))
            .unwrap()
            .virtual_servers[0]
            .clone()
        };
        let v = vs("");
        assert_eq!(v.persistence_timeout, Some(Duration::from_secs(360)));
        assert_eq!(v.persistence_granularity, Some(24));
        assert_eq!(
            vs(" persistence_timeout 60\n").persistence_timeout,
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn only_regular_non_executable_files_are_read_and_at_most_16_mib() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("hlb-inctype-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("keepalived.conf");
        let errs = |inc: &str| {
            std::fs::write(&f, format!("include {inc}\n{INST}}}\n")).unwrap();
            let e = crate::config::load_with(&f, None).unwrap_err();
            e.iter().map(|e| e.to_string()).collect::<Vec<_>>()
        };
        // keepalived (parser.c read_conf_file) skips what is not a regular file, and
        // executable files: an error here, before anything is opened or read.
        let e = errs("/dev/zero");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].ends_with(":1:9: include \"/dev/zero\": /dev/zero: not a regular file (keepalived skips it, saying so); name a regular file"), "{e:?}");
        let fifo = dir.join("fifo.conf");
        let _ = std::fs::remove_file(&fifo);
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let e = errs("*.conf");
        assert!(e.iter().any(|m| m.contains("fifo.conf: not a regular file")), "{e:?}");
        std::fs::remove_file(&fifo).unwrap();
        let x = dir.join("x.conf");
        std::fs::write(&x, "").unwrap();
        std::fs::set_permissions(&x, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = errs("x.conf");
        assert!(e[0].contains("x.conf: the file is executable, and keepalived skips"), "{e:?}");
        std::fs::set_permissions(&x, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&x, vec![b'#'; (MAX_CONF_BYTES + 1) as usize]).unwrap();
        let e = errs("x.conf");
        assert!(e[0].contains("x.conf: the file is larger than 16 MiB"), "{e:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn include_takes_one_pattern_read_raw_with_brace_alternatives() {
        assert_eq!(brace_alternatives("a.conf"), None);
        assert_eq!(brace_alternatives("d/{x,y}.conf").unwrap(), ["d/x.conf", "d/y.conf"]);
        assert_eq!(
            brace_alternatives("{a,b{c,d}}/{e,f}").unwrap(),
            ["a/e", "a/f", "bc/e", "bc/f", "bd/e", "bd/f"]
        );
        assert_eq!(brace_alternatives("d/{x.conf"), None);
        let dir = std::env::temp_dir().join(format!("hlb-incbrace-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("conf.d")).unwrap();
        std::fs::write(dir.join("conf.d/vrrp.conf"), format!("{INST}}}\n")).unwrap();
        std::fs::write(dir.join("conf.d/lvs.conf"), "global_defs {\n router_id lb1\n}\n").unwrap();
        let f = dir.join("keepalived.conf");
        std::fs::write(&f, "include conf.d/{vrrp,lvs}.conf\n").unwrap();
        let l = crate::config::load_with(&f, None).unwrap();
        assert_eq!(l.config.global.router_id.as_deref(), Some("lb1"));
        assert_eq!(l.config.vrrp_instances.len(), 1);
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        // keepalived includes only with exactly one argument.
        std::fs::write(&f, "include conf.d/vrrp.conf conf.d/lvs.conf\n").unwrap();
        let e = crate::config::load_with(&f, None).unwrap_err();
        let e: Vec<String> = e.iter().map(|e| e.to_string()).collect();
        assert!(e[0].contains(":1:26: include takes one file name or pattern: keepalived includes only with exactly one"), "{e:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_include_that_matches_nothing_is_a_warning_and_nothing_to_do_an_error() {
        let dir = std::env::temp_dir().join(format!("hlb-noinc-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("conf.d")).unwrap();
        let f = dir.join("keepalived.conf");
        // keepalived (parser.c read_conf_file) logs "No config files matched" and goes on.
        std::fs::write(&f, format!("! comment\ninclude conf.d/*.conf\n{INST}}}\n")).unwrap();
        let l = crate::config::load_with(&f, None).unwrap();
        let w: Vec<String> = l.warnings.iter().map(|w| w.to_string()).collect();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].ends_with(":2:9: include \"conf.d/*.conf\" matched no file")
                || w[0].contains(":2:9: include \"conf.d/*.conf\" matched no file ("),
            "{w:?}"
        );
        // With nothing else in the file, there is nothing to run: an error naming the include.
        std::fs::write(&f, "global_defs {\n router_id a\n}\ninclude conf.d/*.conf\n").unwrap();
        let e = crate::config::load_with(&f, None).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}:1:1: nothing to do: the configuration has no vrrp_instance and no virtual_server; include \"conf.d/*.conf\" at {}:4 matched no file",
                f.display(),
                f.display()
            )
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn convert_leaves_inherited_check_values_to_inheritance() {
        let c = parse(&format!(
            "{INST}}}\nvirtual_server 192.0.2.10 80 {{\n delay_loop 6\n retry 2\n \
             real_server 10.0.0.1 80 {{\n  TCP_CHECK {{\n   connect_timeout 3\n  }}\n }}\n \
             real_server 10.0.0.2 80 {{\n  HTTP_GET {{\n   url {{\n    path /\n   }}\n   \
             connect_port 8080\n   delay_loop 9\n  }}\n }}\n}}\n"
        ))
        .unwrap();
        let toml = crate::config::to_toml::to_toml(&c);
        let checks: Vec<&str> = toml.split("[virtual_server.real_server.").skip(1).collect();
        // Only what was written at the check differs from what it inherits.
        // (A virtual server's retry is not in the model: it is written into each check that
        // takes it, as a value that differs from the check's default.)
        assert!(
            checks[0]
                .starts_with("TCP_CHECK]\nretry = 2\nrise = 1\nfall = 1\nconnect_timeout = 3\n"),
            "{toml}"
        );
        assert!(!checks[0].contains("delay_loop") && !checks[0].contains("connect_ip"), "{toml}");
        assert!(
            checks[1].contains("delay_loop = 9\n") && checks[1].contains("connect_port = 8080\n")
        );
        assert!(!checks[1].contains("warmup"), "{toml}");
        // Edited later, the virtual server's delay_loop and a real server's address still
        // reach its check.
        let edited = toml
            .replace("delay_loop = 6", "delay_loop = 7")
            .replace("\"10.0.0.1\"", "\"10.0.0.9\"");
        let e = crate::config::parse_str(&edited, Path::new("c.toml")).unwrap();
        let chk = e.virtual_servers[0].real_servers[0].check.as_ref().unwrap();
        assert_eq!(chk.timing.delay_loop, Duration::from_secs(7));
        assert_eq!(chk.timing.warmup, Duration::from_secs(7));
        assert_eq!(chk.timing.retry, 2);
        assert_eq!(chk.kind.connect().unwrap().target, "10.0.0.9:80".parse().unwrap());
        let http = e.virtual_servers[0].real_servers[1].check.as_ref().unwrap();
        assert_eq!(http.timing.delay_loop, Duration::from_secs(9), "its own stays");
        assert_eq!(http.kind.connect().unwrap().target, "10.0.0.2:8080".parse().unwrap());
    }

    #[test]
    fn loopback_real_and_sorry_servers_are_refused_on_the_ebpf_planes() {
        let conf = |dp: &str| {
            format!(
                "global_defs {{\n dataplane {dp}\n}}\n{INST}}}\nvirtual_server 192.0.2.10 80 {{\n \
                 sorry_server 127.0.0.1 80\n real_server 127.0.0.2 80 {{\n }}\n real_server 10.0.0.1 80 {{\n }}\n}}\n"
            )
        };
        for dp in ["xdp", "tc"] {
            let e = errors(&conf(dp));
            assert_eq!(e.len(), 2, "{e:?}");
            assert_eq!(
                e[0],
                format!("k.conf:12:2: sorry_server 127.0.0.1 is a loopback address: the {dp} data plane forwards to other hosts and cannot deliver to this one, so its traffic would be lost; use dataplane = \"ipvs\" (kernel IPVS delivers to a local real server), or run the service on another host")
            );
            assert!(e[1].starts_with(&format!("k.conf:13:14: real_server 127.0.0.2 is a loopback address: the {dp} data plane")), "{e:?}");
        }
        // Kernel IPVS delivers locally.
        parse(&conf("ipvs")).unwrap();
    }

    #[test]
    fn weighted_trackers_of_sync_group_members_run_as_keepalived_runs_them() {
        let text = |flag: &str| {
            format!(
                "vrrp_script chk {{\n script /bin/true\n weight -20\n}}\ntrack_file f1 {{\n file /run/f1\n}}\n\
                 track_file f5 {{\n file /run/f5\n weight 5\n}}\n\
                 vrrp_sync_group VG1 {{\n group {{\n  VI_1\n }}\n{flag}}}\n{INST} track_interface {{\n  eth1 weight -10\n  eth2\n }}\n \
                 track_script {{\n  chk\n }}\n track_file {{\n  f1\n  f5\n }}\n}}\n"
            )
        };
        // vrrp.c vrrp_complete_instance: without sync_group_tracking_weight a weighted
        // interface counts with weight 0, a weighted script is not tracked, a file of the
        // default weight 1 counts with weight 0 and of another weight is not tracked.
        let l = parse_str_with_warnings(&text(""), Path::new("k.conf")).unwrap();
        let i = &l.config.vrrp_instances[0];
        let ifs: Vec<(&str, i32)> =
            i.track_interface.iter().map(|t| (t.interface.as_str(), t.weight)).collect();
        assert_eq!(ifs, [("eth1", 0), ("eth2", 0)]);
        assert!(i.track_script.is_empty());
        let files: Vec<(&str, i32)> =
            i.track_file.iter().map(|t| (t.track_file.as_str(), t.weight)).collect();
        assert_eq!(files, [("f1", 0)]);
        let w: Vec<String> = l.warnings.iter().map(|w| w.to_string()).collect();
        assert_eq!(w.len(), 4, "{w:?}");
        assert_eq!(
            w[0],
            "k.conf:24:3: track_interface eth1 of vrrp_instance VI_1: weight -10 ignored, as keepalived does for a member of vrrp_sync_group VG1 without sync_group_tracking_weight (set it in the group to apply the weight): it counts with weight 0 (FAULT while down)"
        );
        assert!(w[1].starts_with("k.conf:28:3: track_script chk of vrrp_instance VI_1 (weight -20) is not tracked, as keepalived does"), "{w:?}");
        assert!(
            w[2].starts_with("k.conf:31:3: track_file f1 of vrrp_instance VI_1: weight 1 ignored"),
            "{w:?}"
        );
        assert!(
            w[3].starts_with(
                "k.conf:32:3: track_file f5 of vrrp_instance VI_1 (weight 5) is not tracked"
            ),
            "{w:?}"
        );
        // With it, the weights apply as written; convert carries the flag.
        let l =
            parse_str_with_warnings(&text(" sync_group_tracking_weight\n"), Path::new("k.conf"))
                .unwrap();
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        let c = &l.config;
        assert!(c.vrrp_sync_groups[0].sync_group_tracking_weight);
        assert_eq!(c.vrrp_instances[0].track_interface[0].weight, -10);
        assert_eq!(c.vrrp_instances[0].track_script[0].weight, -20);
        let toml = crate::config::to_toml::to_toml(c);
        assert!(toml.contains("sync_group_tracking_weight = true"), "{toml}");
        assert_eq!(&crate::config::parse_str(&toml, Path::new("c.toml")).unwrap(), c);
    }

    /// The same rule for an address owner (priority 255, or `state MASTER` without a
    /// priority), except that its weighted interfaces are not tracked at all (vrrp.c:
    /// "stop tracking it"); a sync group member that is an owner follows the group's rule.
    #[test]
    fn weighted_trackers_of_an_address_owner_run_as_keepalived_runs_them() {
        let owner = |prio: &str| {
            format!(
                "vrrp_script chk {{\n script /bin/true\n weight -20\n}}\ntrack_file f1 {{\n file /run/f1\n}}\n\
                 vrrp_instance VI_1 {{\n interface eth0\n virtual_router_id 51\n{prio} virtual_ipaddress {{\n 192.0.2.10/24\n }}\n \
                 track_interface {{\n  eth1 weight -10\n  eth2\n }}\n track_script {{\n  chk\n }}\n track_file {{\n  f1\n }}\n}}\n"
            )
        };
        for prio in [" priority 255\n", " state MASTER\n", " priority +255\n"] {
            let (c, w) = warnings(&owner(prio));
            let i = &c.vrrp_instances[0];
            assert_eq!(i.priority, 255);
            let ifs: Vec<(&str, i32)> =
                i.track_interface.iter().map(|t| (t.interface.as_str(), t.weight)).collect();
            assert_eq!(ifs, [("eth2", 0)], "the weighted one is dropped");
            assert!(i.track_script.is_empty());
            assert_eq!(i.track_file.iter().map(|t| t.weight).collect::<Vec<_>>(), [0]);
            assert_eq!(w.len(), 3, "{w:?}");
            assert!(
                w[0].contains(
                    "is not tracked, as keepalived does for an address owner (priority 255)"
                ),
                "{w:?}"
            );
        }
        // Not an owner: the weights apply (a quoted MASTER derives no priority 255 either).
        for prio in [" priority 254\n", " state \"MASTER\"\n priority 100\n"] {
            let (c, w) = warnings(&owner(prio));
            assert!(w.is_empty(), "{prio}: {w:?}");
            assert_eq!(c.vrrp_instances[0].track_interface[0].weight, -10);
        }
    }

    fn warnings(text: &str) -> (Config, Vec<String>) {
        let l = parse_str_with_warnings(text, Path::new("k.conf")).unwrap();
        (l.config, l.warnings.iter().map(|w| w.to_string()).collect())
    }

    #[test]
    fn persistence_timeout_0_means_no_persistence_as_in_keepalived() {
        // check_parser.c pto_handler: 0 is reported invalid and ignored.
        let (c, w) = warnings(&format!(
            "{INST}}}\nvirtual_server 192.0.2.10 80 {{\n persistence_timeout 0\n protocol TCP\n}}\n"
        ));
        assert_eq!(c.virtual_servers[0].persistence_timeout, None);
        assert_eq!(w, ["k.conf:9:22: persistence_timeout 0 means no persistence (keepalived ignores it); remove it"]);
        // With a granularity, keepalived's default timeout applies (pgr_handler).
        let (c, w) = warnings(&format!(
            "{INST}}}\nvirtual_server 192.0.2.10 80 {{\n protocol TCP\n persistence_timeout 0\n persistence_granularity 24\n}}\n"
        ));
        assert_eq!(c.virtual_servers[0].persistence_timeout, Some(Duration::from_secs(360)));
        assert!(
            w[0].ends_with("keepalived's default 360 s applies; write the timeout you mean"),
            "{w:?}"
        );
    }

    #[test]
    fn obsolete_and_process_tuning_keywords_say_so_and_can_be_dropped() {
        let e = errors(&format!(
            "global_defs {{\n max_auto_priority 50\n vrrp_no_swap\n}}\n{INST}}}\nvirtual_server 192.0.2.10 80 {{\n nat_mask 255.255.255.0\n net_mask 255.255.255.0\n}}\n"
        ));
        assert_eq!(
            e,
            [
                "k.conf:2:2: max_auto_priority is not supported by ha-lb: it tunes keepalived's own processes and changes nothing about VIPs or forwarding; remove it (`ha-lb convert --drop-unsupported` leaves it out)",
                "k.conf:3:2: vrrp_no_swap is not supported by ha-lb: it tunes keepalived's own processes and changes nothing about VIPs or forwarding; remove it (`ha-lb convert --drop-unsupported` leaves it out)",
                "k.conf:13:2: nat_mask is obsolete and has no effect: keepalived 1.x took it for LVS-NAT on Linux 2.2, keepalived 2 does not know it; remove it (`ha-lb convert --drop-unsupported` leaves it out)",
                "k.conf:14:2: net_mask has no effect: it is not a keepalived keyword (keepalived reports it as unknown and ignores it; nat_mask was keepalived 1.x's); remove it (`ha-lb convert --drop-unsupported` leaves it out)",
            ]
        );
        assert_eq!(droppable("nat_mask"), Some("nothing: it has no effect (see its error)"));
        assert!(droppable("max_auto_priority").is_some_and(|w| w.starts_with("nothing about VIPs")));
    }

    #[test]
    fn mcast_src_ip_is_unicast_src_ip_as_in_keepalived() {
        // vrrp_parser.c: both set the adverts' source address (vrrp_srcip_handler).
        let (c, w) = warnings(&format!("{INST} mcast_src_ip 192.0.2.2\n}}\n"));
        assert!(w.is_empty(), "{w:?}");
        let i = &c.vrrp_instances[0];
        assert_eq!(i.unicast_src_ip, Some("192.0.2.2".parse().unwrap()));
        assert!(!i.is_unicast());
        assert_eq!(
            errors(&format!("{INST} mcast_src_ip 192.0.2.2\n unicast_src_ip 192.0.2.3\n}}\n")),
            ["k.conf:8:2: unicast_src_ip is set twice in this vrrp_instance (first at line 7)"]
        );
        let e = errors(&format!("global_defs {{\n vrrp_mcast_group4 224.0.0.19\n}}\n{INST}}}\n"));
        assert!(e[0].ends_with("vrrp_mcast_group4 is not supported by ha-lb; ha-lb sends multicast adverts to VRRP's own group (224.0.0.18 / ff02::12); to send them elsewhere, list the peers in unicast_peer"), "{e:?}");
    }

    #[test]
    fn lvs_sync_daemon_interface_in_an_instance_is_the_global_lvs_sync_daemon() {
        // vrrp_parser.c vrrp_lvs_syncd_handler: deprecated; global ifname and this instance.
        let (c, w) = warnings(&format!("{INST} lvs_sync_daemon_interface eth1\n}}\n"));
        let s = c.global.lvs_sync_daemon.as_ref().unwrap();
        assert_eq!((s.interface.as_str(), s.vrrp_instance.as_str(), s.id), ("eth1", "VI_1", None));
        assert_eq!(w, ["k.conf:7:2: lvs_sync_daemon_interface is deprecated (keepalived says so too): it means global_defs lvs_sync_daemon eth1 VI_1; write that"]);
        // Already set globally: keepalived ignores it; ha-lb says so.
        assert_eq!(
            errors(&format!(
                "global_defs {{\n lvs_sync_daemon eth2 VI_1\n}}\n{INST} lvs_sync_daemon_interface eth1\n}}\n"
            )),
            ["k.conf:10:2: lvs_sync_daemon_interface: connection sync is already set at line 2 (keepalived ignores this one); remove it"]
        );
    }

    #[test]
    fn sync_group_members_outside_a_group_block_say_where_they_go() {
        let e = errors(&format!("{INST}}}\nvrrp_sync_group VG1 {{\n VI_1\n VI_2\n}}\n"));
        assert!(
            e == ["k.conf:9:2: \"VI_1\" is not a vrrp_sync_group keyword; members are listed in a group block: group { VI_1 VI_2 } (keepalived drops a group without one)"],
            "{e:?}"
        );
    }

    #[test]
    fn a_long_auth_pass_is_cut_to_8_bytes_as_in_keepalived() {
        // vrrp_parser.c vrrp_auth_pass_handler: "Truncating auth_pass to 8 characters".
        let cut = format!("{INST} authentication {{\n auth_type PASS\n auth_pass aéééé\n }}\n}}\n");
        assert!(
            errors(&cut)[0].contains("its 8th byte falls inside a character"),
            "{:?}",
            errors(&cut)
        );
        let (c, w) = warnings(&format!(
            "{INST} authentication {{\n auth_type PASS\n auth_pass 0123456789ab\n }}\n}}\n"
        ));
        assert_eq!(
            c.vrrp_instances[0].authentication,
            Some(Authentication::Pass("01234567".into()))
        );
        assert_eq!(w, ["k.conf:9:12: auth_pass is 12 bytes: only its first 8 are used (VRRPv2 carries 8; keepalived truncates it the same way)"]);
    }

    #[test]
    fn an_ipv6_instance_whose_first_vip_is_global_says_how_to_fix_it() {
        let inst = |vips: &str| {
            format!("vrrp_instance V6 {{\n interface eth0\n virtual_router_id 51\n virtual_ipaddress {{\n{vips} }}\n}}\n")
        };
        assert_eq!(
            errors(&inst(" 2001:db8::10/64\n")),
            ["k.conf:5:2: the first virtual_ipaddress of an IPv6 instance must be link-local (fe80::/10), not 2001:db8::10 (RFC 5798 section 5.2.9): add a link-local VIP before it, the same on every node of this VRID (e.g. fe80::1/64)"]
        );
        let e = errors(&inst(" 2001:db8::10/64\n fe80::10/64\n"));
        assert!(e[0].ends_with("section 5.2.9): move fe80::10 to the front of the list"), "{e:?}");
    }

    #[test]
    fn globs() {
        assert!(glob_match("*.conf", "a.conf"));
        assert!(!glob_match("*.conf", "a.conf.bak"));
        assert!(glob_match("vs-?[0-9].conf", "vs-a1.conf"));
        assert!(!glob_match("vs-[!a]*", "vs-a"));
        assert!(glob_match("[", "["));
    }
}
