//! Tests of `config` (moved out of config.rs).
use super::*;

#[test]
fn template_is_the_default_and_documents_every_key() {
    let parsed = Config::parse(Path::new("template"), TEMPLATE).unwrap();
    assert_eq!(parsed, Config::default());
    let table: toml::Table = toml::from_str(&toml::to_string(&Config::default()).unwrap()).unwrap();
    let mut keys = Vec::new();
    for (k, v) in &table {
        match v.as_table() {
            // A section's keys, and those of its sub-sections ([notify.webhook],
            // [web.roles]).
            Some(t) => {
                for (sk, sv) in t {
                    let header = format!("[{k}.{sk}]");
                    match sv.as_table() {
                        Some(sub) if TEMPLATE.lines().any(|l| l == header) => keys.extend(sub.keys().cloned()),
                        _ => keys.push(sk.clone()),
                    }
                }
            }
            None => keys.push(k.clone()),
        }
    }
    for key in keys {
        let line = TEMPLATE
            .lines()
            .position(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("{key} missing"));
        let above = TEMPLATE.lines().nth(line - 1).unwrap();
        assert!(above.starts_with('#'), "{key} has no comment above it");
    }
}

#[test]
fn policy_defaults_are_those_of_consent_schema() {
    for cc in ["DE", "FR", "US"] {
        let home: Jurisdiction = cc.parse().unwrap();
        assert_eq!(PolicyConfig::default().site_policy(home), SitePolicy::new(home));
    }
    let text = "[policy]\ncross_border_level = \"pseudonymised\"\napproval_required = []\n\
                    min_level = { quality = \"anonymised\" }\n";
    let p = Config::parse(Path::new("c.toml"), text).unwrap().policy;
    assert_eq!(p.cross_border_level, DeidLevel::Pseudonymised);
    assert!(p.approval_required.is_empty());
    assert_eq!(p.min_level.len(), 1, "min_level replaces the default table");
    assert_eq!(
        p.waiver_level,
        DeidLevel::Anonymised,
        "unlisted rules keep their default"
    );
    for (text, needle) in [
        ("[policy]\nhome_jurisdiction = \"DE\"\n", "home_jurisdiction"),
        ("[policy]\nmax_grant_days = 0\n", "max_grant_days"),
        ("[transfer]\nstreams = 0\n", "transfer.streams"),
        ("[transfer]\nretry_secs = 0\n", "transfer.retry_secs"),
        ("[retention]\nlocked_days = 40000\n", "retention.locked_days"),
        ("[retention]\nlocked_days = -1\n", "locked_days"),
        ("[policy]\napproval_required = [\"marketing\"]\n", "marketing"),
        ("[policy]\nwaiver_level = \"secret\"\n", "secret"),
    ] {
        let err = Config::parse(Path::new("c.toml"), text).unwrap_err().to_string();
        assert!(err.contains(needle), "{text}: {err}");
    }
}

#[test]
fn role_rules_are_read_in_order_into_the_site_policy() {
    // The template's commented example, uncommented, is a valid policy.
    let example: String = TEMPLATE
        .lines()
        .skip_while(|l| !l.starts_with("# [[policy.role_rule]]"))
        .take_while(|l| l.starts_with('#'))
        .map(|l| l.trim_start_matches('#').trim_start())
        .collect::<Vec<_>>()
        .join("\n");
    let c = Config::parse(Path::new("c.toml"), &format!("[policy]\n{example}\n")).unwrap();
    let home: Jurisdiction = "DE".parse().unwrap();
    let p = c.policy.site_policy(home);
    assert_eq!(p.role_rules.len(), 2);
    assert_eq!(p.role_rules[0].effect(), consent_schema::RuleEffect::Deny);
    assert_eq!(
        p.role_rules[1].effect(),
        consent_schema::RuleEffect::Allow {
            min_level: Some(DeidLevel::Anonymised),
            approval: true
        }
    );
    // Everything else keeps its default; no rules is the default.
    assert_eq!(
        SitePolicy {
            role_rules: Vec::new(),
            ..p
        },
        SitePolicy::new(home)
    );
    for (text, needle) in [
        (
            "[[policy.role_rule]]\nrole = \"*\"\neffect = \"deny\"\nwhy = 1\n",
            "why",
        ),
        (
            "[[policy.role_rule]]\nrole = \"*\"\neffect = \"deny\"\nmodality = []\n",
            "empty",
        ),
        ("[[policy.role_rule]]\nrole = \"nurse\"\neffect = \"deny\"\n", "nurse"),
    ] {
        let err = Config::parse(Path::new("c.toml"), text).unwrap_err().to_string();
        assert!(err.contains(needle), "{text}: {err}");
    }
}

#[test]
fn limits_are_checked() {
    let c = Config::parse(
            Path::new("c.toml"),
            "[limits]\nshares_from = \"listed\"\nshare_peers = [\"12D3KooWGzBVhRDNzSvHqYGZbGrnRXtBmUQLZYGh5YAyhXyW6Poc\"]\n",
        )
        .unwrap();
    assert_eq!(c.limits.shares_from, SharesFrom::Listed);
    for (text, needle) in [
        ("[limits]\nshares_from = \"everyone\"\n", "everyone"),
        ("[limits]\nshares_from = \"listed\"\n", "limits.share_peers"),
        (
            "[limits]\nshare_peers = [\"12D3KooWGzBVhRDNzSvHqYGZbGrnRXtBmUQLZYGh5YAyhXyW6Poc\"]\n",
            "limits.share_peers",
        ),
        (
            "[limits]\nshares_from = \"listed\"\nshare_peers = [\"bob\"]\n",
            "limits.share_peers",
        ),
        (
            "[limits]\npending_shares_per_peer = 0\n",
            "limits.pending_shares_per_peer",
        ),
        (
            "[limits]\npending_share_bytes_per_peer = 10\n",
            "limits.pending_share_bytes_per_peer",
        ),
        ("[limits]\nincoming_stale_secs = 5\n", "limits.incoming_stale_secs"),
        ("[limits]\nstreams_per_peer = 0\n", "limits.streams_per_peer"),
        ("[limits]\nstreams_per_peer = 2\n", "transfer.streams"),
        ("[limits]\nrequests_per_minute = 0\n", "limits.requests_per_minute"),
        ("[limits]\nrequest_burst = 0\n", "limits.request_burst"),
        (
            "[limits]\npending_approvals_per_peer = 0\n",
            "limits.pending_approvals_per_peer",
        ),
        ("[limits]\nmax_streams = 3\n", "max_streams"),
    ] {
        let err = Config::parse(Path::new("c.toml"), text).unwrap_err().to_string();
        assert!(err.contains(needle), "{text}: {err}");
    }
}

#[test]
fn bad_values_are_named() {
    let err = Config::parse(Path::new("c.toml"), "[store]\nchunk_size = 1000\n").unwrap_err();
    assert!(err.to_string().contains("store.chunk_size"), "{err}");
    let err = Config::parse(Path::new("c.toml"), "[store]\nchunk_sise = 4096\n").unwrap_err();
    assert!(err.to_string().contains("chunk_sise"), "{err}");
    let err = Config::parse(Path::new("c.toml"), "config_version = 9\n").unwrap_err();
    assert!(err.to_string().contains("config_version"), "{err}");
    let err = Config::parse(Path::new("c.toml"), "[network]\nbootstrap = [\"/ip4/1.2.3.4/tcp/1\"]\n").unwrap_err();
    assert!(
        err.to_string().contains("network.bootstrap") && err.to_string().contains("/p2p/"),
        "{err}"
    );
    let err = Config::parse(Path::new("c.toml"), "[network]\nlisten = [\"tcp:7460\"]\n").unwrap_err();
    assert!(err.to_string().contains("network.listen"), "{err}");
    assert!(Config::load(Path::new("/nonexistent/config.toml")).is_err());
}

#[test]
fn notify_settings_are_checked() {
    let text = "[notify.webhook]\nurl = \"https://hooks.example.org/m\"\ntoken = \"abc\"\n\
                    [notify.syslog]\naddress = \"127.0.0.1:514\"\ntransport = \"udp\"\nfacility = \"local4\"\n";
    let c = Config::parse(Path::new("c.toml"), text).unwrap();
    assert_eq!(c.notify.syslog.facility_code(), Some(20));
    assert_eq!(c.notify.webhook.token.expose(), "abc");
    assert!(!format!("{c:?}").contains("abc"), "the token is not in Debug");
    assert!(!toml::to_string(&c).unwrap().contains("abc"), "nor serialized");
    for (text, needle) in [
        ("[notify.webhook]\nurl = \"ftp://x/\"\n", "notify.webhook.url"),
        ("[notify.webhook]\nurl = \"http://u:p@x/\"\n", "notify.webhook.url"),
        ("[notify.webhook]\ntimeout_secs = 0\n", "notify.webhook.timeout_secs"),
        (
            "[notify.webhook]\ntoken_header = \"a b\"\n",
            "notify.webhook.token_header",
        ),
        ("[notify.webhook]\ntoken = \"a\\nb\"\n", "notify.webhook.token"),
        ("[notify.syslog]\naddress = \"collector\"\n", "notify.syslog.address"),
        ("[notify.syslog]\ntransport = \"carrier-pigeon\"\n", "carrier-pigeon"),
        ("[notify.syslog]\nfacility = \"local9\"\n", "notify.syslog.facility"),
        ("[notify.syslog]\ncert_file = \"c.pem\"\n", "notify.syslog.key_file"),
        (
            "[notify.syslog]\ntransport = \"tcp\"\nca_file = \"ca.pem\"\n",
            "notify.syslog.transport",
        ),
        ("[notify.syslog]\nhost = \"x\"\n", "host"),
    ] {
        let err = Config::parse(Path::new("c.toml"), text).unwrap_err().to_string();
        assert!(err.contains(needle), "{text}: {err}");
    }
}

#[test]
fn webhook_url_secrets_are_not_shown() {
    let text = "[notify.webhook]\nurl = \"https://hooks.example.org/m?key=s3cr3t&x=1#frag\"\n";
    let c = Config::parse(Path::new("c.toml"), text).unwrap();
    let shown = format!("{c:?}");
    assert!(!shown.contains("s3cr3t") && !shown.contains("frag"), "{shown}");
    assert!(shown.contains("https://hooks.example.org/m?(redacted)"), "{shown}");
    let shown = format!("{:#?}", c.notify);
    assert!(!shown.contains("s3cr3t"), "{shown}");
    // Nor in an error about the URL (query or user information).
    for text in [
        "[notify.webhook]\nurl = \"ftp://hooks.example.org/m?key=s3cr3t\"\n",
        "[notify.webhook]\nurl = \"https://u:s3cr3t@hooks.example.org/m\"\n",
        "[notify.webhook]\nurl = \"https://hooks.example.org/m?key=s3cr3t\"\ntoken_header = \"a b\"\n",
        "[notify.webhook]\nurl = \"http:///m?key=s3cr3t\"\n",
        "[notify.webhook]\nurl = \"http://hooks.example.org/m?key=s3cr3t\"\ntoken = \"t0ken\"\n",
    ] {
        let err = Config::parse(Path::new("c.toml"), text).unwrap_err().to_string();
        assert!(!err.contains("s3cr3t") && !err.contains("t0ken"), "{text}: {err}");
    }
}

#[test]
fn a_token_goes_over_plain_http_only_to_this_machine() {
    let parse = |url: &str, token: &str| {
        let text = format!("[notify.webhook]\nurl = \"{url}\"\ntoken = \"{token}\"\n");
        Config::parse(Path::new("c.toml"), &text).map(|_| ())
    };
    let err = parse("http://hooks.example.org/m", "abc").unwrap_err().to_string();
    assert!(
        err.contains("notify.webhook.token") && err.contains("clear text") && err.contains("https://"),
        "{err}"
    );
    assert!(parse("http://10.0.0.5:8080/m", "abc").is_err());
    for url in [
        "https://hooks.example.org/m",
        "http://127.0.0.1:8080/m",
        "http://[::1]:8080/m",
        "http://localhost/m",
        "http://LOCALHOST:9/m",
    ] {
        parse(url, "abc").unwrap_or_else(|e| panic!("{url}: {e}"));
    }
    parse("http://hooks.example.org/m", "").unwrap();
    // The same rule when the sink is built from a configuration made in
    // code: notify's test `a_sink_built_in_code_refuses_a_token_over_http`.
}

#[test]
fn metrics_listen_is_off_by_default_and_takes_an_address() {
    assert_eq!(Config::default().metrics.listen, None);
    // The template's commented example, uncommented, is valid.
    let example = TEMPLATE
        .lines()
        .find(|l| l.starts_with("# listen = \"127.0.0.1:9464\""))
        .expect("the [metrics] example")
        .trim_start_matches("# ");
    let c = Config::parse(Path::new("c.toml"), &format!("[metrics]\n{example}\n")).unwrap();
    assert_eq!(c.metrics.listen, Some("127.0.0.1:9464".parse().unwrap()));
    for (text, want) in [
        ("[metrics]\nlisten = \"127.0.0.1:0\"\n", Some("127.0.0.1:0")),
        ("[metrics]\nlisten = \"[::1]:9464\"\n", Some("[::1]:9464")),
        ("[metrics]\nlisten = \"0.0.0.0:9464\"\n", Some("0.0.0.0:9464")),
        ("[metrics]\n", None),
    ] {
        let c = Config::parse(Path::new("c.toml"), text).unwrap();
        assert_eq!(c.metrics.listen, want.map(|a| a.parse().unwrap()), "{text}");
    }
    for (text, needle) in [
        ("[metrics]\nlisten = \"localhost:9464\"\n", "listen"),
        ("[metrics]\nlisten = \"127.0.0.1\"\n", "listen"),
        ("[metrics]\nlisten = 9464\n", "listen"),
        ("[metrics]\nport = 9464\n", "port"),
    ] {
        let err = Config::parse(Path::new("c.toml"), text).unwrap_err().to_string();
        assert!(err.contains(needle), "{text}: {err}");
    }
}
