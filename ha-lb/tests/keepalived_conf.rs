//! The keepalived.conf front-end: hand-written keepalived equivalents of every `conf/*.toml`
//! example load to the same model, the keepalived configs the interop labs run parse,
//! invalid files report exactly their `# expect: LINE:COL: message` lines, and
//! `ha-lb convert` writes TOML that reads back to the same model.

use std::path::{Path, PathBuf};
use std::process::Command;

use ha_lb::config::{self, keepalived, to_toml::to_toml, Config, ConfigErrors};

mod support;
use support::{files, repo};

fn fixtures() -> PathBuf {
    repo().join("ha-lb/tests/fixtures/keepalived-conf")
}

fn load(path: &Path) -> Config {
    config::load(path)
        .unwrap_or_else(|e: ConfigErrors| panic!("{} does not load:\n{e}", path.display()))
}

/// Each `conf/NAME.toml` has `fixtures/keepalived-conf/NAME.conf`.
fn example_pairs() -> Vec<(PathBuf, PathBuf)> {
    let tomls = files(&repo().join("conf"), "toml");
    assert!(tomls.len() >= 8, "expected the documented examples, found {tomls:?}");
    tomls
        .into_iter()
        .map(|t| {
            let stem = t.file_stem().unwrap().to_string_lossy().into_owned();
            (t, fixtures().join(format!("{stem}.conf")))
        })
        .collect()
}

#[test]
fn every_toml_example_has_a_keepalived_conf_that_loads_to_an_equal_model() {
    for (toml, conf) in example_pairs() {
        assert!(
            conf.exists(),
            "{} has no keepalived.conf equivalent {}",
            toml.display(),
            conf.display()
        );
        let from_toml = load(&toml);
        let from_conf = load(&conf);
        assert_eq!(from_conf, from_toml, "{} vs {}", conf.display(), toml.display());
    }
}

#[test]
fn load_picks_the_front_end_by_file_name() {
    assert!(config::is_toml(Path::new("/etc/ha-lb/ha-lb.toml")));
    assert!(!config::is_toml(Path::new("/etc/keepalived/keepalived.conf")));
    assert!(!config::is_toml(Path::new("keepalived")));
    // keepalived text in a .toml file is a TOML syntax error: a `.toml` name decides. Under
    // another name a file whose first significant line is a table header is TOML (see
    // `config::looks_like_toml`); keepalived's reader, given TOML, finds unknown keywords.
    let e = config::load(&repo().join("conf/dr-service.toml")).map(|_| ());
    assert!(e.is_ok());
    let e =
        keepalived::parse_str("[global]\nrouter_id = \"x\"\n", Path::new("k.conf")).unwrap_err();
    assert_eq!(
        e.errors[0].to_string(),
        "k.conf:1:1: unknown keyword \"[global]\" in the top level; allowed keywords: global_defs, vrrp_script, track_file, vrrp_track_file, vrrp_instance, vrrp_sync_group, virtual_server_group, virtual_server"
    );
}

#[test]
fn a_toml_file_under_another_name_loads_as_toml() {
    let dir = std::env::temp_dir().join(format!("ha-lb-toml-name-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(repo().join("conf/dr-service.toml")).unwrap();
    for name in ["ha-lb.toml.new", ".ha-lb.toml.swp", "ha-lb.conf"] {
        let f = dir.join(name);
        std::fs::write(&f, &text).unwrap();
        assert!(config::is_toml(&f), "{name}");
        config::load(&f).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn convert_round_trips_every_fixture_and_example() {
    let mut all: Vec<PathBuf> = files(&fixtures(), "conf");
    all.extend(files(&repo().join("conf"), "toml"));
    assert!(all.len() >= 16);
    for f in all {
        let model = load(&f);
        let text = to_toml(&model);
        let back = config::parse_str(&text, Path::new("converted.toml")).unwrap_or_else(|e| {
            panic!("{}: converted TOML does not load:\n{e}\n---\n{text}", f.display())
        });
        assert_eq!(back, model, "{}: round trip changed the model\n---\n{text}", f.display());
    }
}

#[test]
fn convert_command_prints_toml_that_loads_to_the_same_model() {
    let conf = fixtures().join("ha-lb.conf");
    let out = Command::new(env!("CARGO_BIN_EXE_ha-lb")).arg("convert").arg(&conf).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let back = config::parse_str(&text, Path::new("stdout.toml")).unwrap();
    assert_eq!(back, load(&conf));

    // An invalid file: its errors on stderr, nothing on stdout, exit status 1.
    let bad = fixtures().join("invalid/unsupported_keyword.conf");
    let out = Command::new(env!("CARGO_BIN_EXE_ha-lb")).arg("convert").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("use_vmac is not supported by ha-lb"));

    // `check` takes keepalived.conf too.
    let out = Command::new(env!("CARGO_BIN_EXE_ha-lb"))
        .args(["check", "-c"])
        .arg(fixtures().join("dr-service.conf"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

// ---- the keepalived configs of the interop labs ------------------------------------------

/// `tests/tests/vrrp_support/mod.rs` `Inst::keepalived` (the keepalived peer of
/// `vrrp_interop` and `vrrp_failover`), for the settings those tests use.
fn lab_inst(
    router: &str,
    version: u8,
    priority: u8,
    advert_int: f64,
    unicast: Option<(&str, &[&str])>,
) -> String {
    const V: &str = "198.18.0.100";
    const VRID: u8 = 51;
    let mut s = format!(
        "global_defs {{\n  router_id {router}\n}}\n\
         vrrp_instance VI_1 {{\n  state BACKUP\n  interface eth0\n  virtual_router_id {VRID}\n  \
         version {version}\n  priority {priority}\n  advert_int {advert_int}\n  virtual_ipaddress {{\n    {V}/24\n  }}\n"
    );
    if let Some((src, peers)) = unicast {
        s.push_str(&format!("  unicast_src_ip {src}\n  unicast_peer {{\n"));
        for p in peers {
            s.push_str(&format!("    {p}\n"));
        }
        s.push_str("  }\n");
    }
    s.push_str("}\n");
    s
}

/// `xtask/src/bench/failover.rs` `keepalived_conf`.
fn bench_failover(router: &str, version: u8, advert_cs: u32, priority: u8) -> String {
    format!(
        "global_defs {{\n  router_id {router}\n  vrrp_version {v}\n}}\n\
         vrrp_instance VI_1 {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 51\n  \
         priority {priority}\n  advert_int {a}\n  virtual_ipaddress {{\n    {VIP}/24\n  }}\n}}\n",
        v = version,
        a = advert_cs as f64 / 100.0,
        VIP = "198.18.0.100",
    )
}

/// `tests/fixtures/keepalived/capture.sh`, which recorded keepalived's own adverts.
fn capture(cfg: &str) -> String {
    let (body, inst) = match cfg {
        "v2" => ("vrrp_version 2", "virtual_router_id 51\n    priority 150\n    advert_int 1\n    virtual_ipaddress { 198.18.0.100/24 198.18.0.101/24 }"),
        "v2auth" => ("vrrp_version 2", "virtual_router_id 52\n    priority 100\n    advert_int 1\n    authentication { auth_type PASS\n      auth_pass secret12 }\n    virtual_ipaddress { 198.18.0.102/24 }"),
        "v3" => ("vrrp_version 3", "virtual_router_id 51\n    priority 150\n    advert_int 0.5\n    virtual_ipaddress { 198.18.0.100/24 }"),
        "v3v6" => ("vrrp_version 3", "virtual_router_id 61\n    priority 200\n    advert_int 1\n    virtual_ipaddress { fd48:4c42::100/64 }"),
        "v3uni" => ("vrrp_version 3", "virtual_router_id 71\n    priority 120\n    advert_int 1\n    unicast_src_ip 198.18.0.1\n    unicast_peer { 198.18.0.2 }\n    virtual_ipaddress { 198.18.0.103/24 }"),
        _ => unreachable!(),
    };
    format!(
        "global_defs {{\n  router_id cap\n  {body}\n  vrrp_garp_master_repeat 1\n}}\nvrrp_instance VI_{cfg} {{\n    state MASTER\n    interface eth0\n    {inst}\n}}\n"
    )
}

fn parse(text: &str, name: &str) -> Config {
    keepalived::parse_str(text, Path::new(name))
        .unwrap_or_else(|e| panic!("{name} does not load:\n{e}\n---\n{text}"))
}

#[test]
fn the_interop_labs_keepalived_configs_parse() {
    for version in [2, 3] {
        for advert in [1.0, 0.1] {
            if version == 2 && advert < 1.0 {
                continue;
            }
            for priority in [100, 150, 200] {
                let uni: &[&str] = &["198.18.0.2"];
                for unicast in [None, Some(("198.18.0.1", uni))] {
                    let c = parse(&lab_inst("d1", version, priority, advert, unicast), "lab.conf");
                    let i = &c.vrrp_instances[0];
                    assert_eq!((i.version.number(), i.priority), (version, priority));
                    assert_eq!(i.advert_int.as_secs_f64(), advert);
                    assert_eq!(i.is_unicast(), unicast.is_some());
                }
            }
        }
    }
    for (version, cs) in [(3, 100), (3, 10), (2, 100)] {
        let c = parse(&bench_failover("ka1", version, cs, 150), "bench.conf");
        assert_eq!(c.vrrp_instances[0].version.number(), version);
    }
    for cfg in ["v2auth", "v3", "v3uni"] {
        let c = parse(&capture(cfg), &format!("{cfg}.conf"));
        let i = &c.vrrp_instances[0];
        assert_eq!(i.garp.master_repeat, 1, "{cfg}: global_defs vrrp_garp_master_repeat");
    }
    // `virtual_ipaddress { A B }` is one line, so one address with an unknown option B:
    // keepalived 2.2.7 advertised one address for it (fixtures/keepalived/v2.hex). ha-lb
    // reports the second address rather than run a VIP the keepalived peer does not have.
    let e = keepalived::parse_str(&capture("v2"), Path::new("v2.conf")).unwrap_err();
    assert_eq!(
        e.errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
        ["v2.conf:12:41: a virtual_ipaddress line holds one address and its options; put 198.18.0.101/24 on a line of its own (keepalived ignores it here)"]
    );
    let one = capture("v2").replace(" 198.18.0.101/24", "");
    assert_eq!(parse(&one, "v2.conf").vrrp_instances[0].virtual_ipaddress.len(), 1);
    // keepalived only warns about a multicast IPv6 instance whose first VIP is not
    // link-local; ha-lb rejects it (conf/README.md, "Where ha-lb differs on purpose").
    let e = keepalived::parse_str(&capture("v3v6"), Path::new("v3v6.conf")).unwrap_err();
    assert_eq!(e.len(), 1, "{e}");
    assert!(
        e.errors[0].to_string().starts_with(
            "v3v6.conf:12:25: the first virtual_ipaddress of an IPv6 instance must be link-local"
        ),
        "{e}"
    );
}

// ---- errors --------------------------------------------------------------------------------

#[test]
fn every_invalid_fixture_reports_its_expected_errors() {
    let files = files(&fixtures().join("invalid"), "conf");
    assert!(files.len() >= 8, "only {} invalid fixtures", files.len());
    support::check_invalid_fixtures(&files);
}

#[test]
fn errors_in_an_included_file_name_that_file() {
    let dir = fixtures().join("include");
    let e = config::load(&dir.join("main.conf")).unwrap_err();
    let got: Vec<String> = e.iter().map(|e| e.to_string()).collect();
    let inc = dir.join("inc/instance.conf");
    let cyc = dir.join("inc/cycle-b.conf");
    assert_eq!(
        got,
        [
            format!("{}:4:23: virtual_router_id 300 is out of range 1..=255", inc.display()),
            format!(
                "{}:2:9: include \"cycle-a.conf\": {} includes itself (an include cycle)",
                cyc.display(),
                dir.join("inc/cycle-a.conf").display()
            ),
        ]
    );
}

/// "first at line N" across files names the other file; all global_defs blocks count as one.
#[test]
fn a_key_set_again_in_an_included_file_names_where_it_was_first() {
    let dir = std::env::temp_dir().join(format!("hlb-kc-twice-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("conf.d")).unwrap();
    let main = dir.join("main.conf");
    std::fs::write(
        &main,
        "global_defs {\n  router_id a\n}\ninclude conf.d/*.conf\nvrrp_instance VI_1 {\n  interface eth0\n  virtual_router_id 51\n  virtual_ipaddress {\n    192.0.2.1/24\n  }\n}\n",
    )
    .unwrap();
    let g = dir.join("conf.d/g.conf");
    std::fs::write(&g, "global_defs {\n  router_id b\n}\n").unwrap();
    let e = config::load(&main).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "{}:2:3: router_id is set twice in global_defs (all its blocks count as one) (first at line 2 of {})",
            g.display(),
            main.display()
        )
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
