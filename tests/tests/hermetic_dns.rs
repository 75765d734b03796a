//! Rspamd resolves through the harness's loopback DNS stub only: a scan of a
//! message from a public IP makes Rspamd ask the stub (the stub's query log
//! grows, with the SPF/DMARC/RBL/PTR lookups), and the records the test puts
//! in the stub decide the SPF and DMARC results. Behaviour only, no timing
//! assertions (the measured timings are in `stack_tests::rspamd`'s docs).

use stack_tests::rspamd::Rspamd;
use std::time::Instant;

type R = anyhow::Result<()>;

const DOMAIN: &str = "hermetic-sender.example";
const CLIENT_IP: &str = "198.51.100.7";

fn message() -> Vec<u8> {
    format!(
        "From: Bob <bob@{DOMAIN}>\r\n\
         To: user@example.test\r\n\
         Subject: hello from outside\r\n\
         Date: Thu, 27 Nov 2025 10:00:00 +0000\r\n\
         Message-ID: <hermetic-1@{DOMAIN}>\r\n\
         \r\n\
         Just a normal message from a public address.\r\n"
    )
    .into_bytes()
}

#[test]
fn rspamd_asks_the_loopback_stub_and_uses_its_answers() -> R {
    let rspamd = Rspamd::builder().start()?;
    let dns = rspamd.dns();

    // The generated config points rspamd at the stub.
    let options = std::fs::read_to_string(rspamd.sandbox().join("etc/local.d/options.inc"))?;
    assert!(
        options.contains(&format!("nameserver = [\"{}\"]", dns.nameserver())),
        "options.inc does not name the stub:\n{options}"
    );

    dns.add_txt(DOMAIN, &format!("v=spf1 ip4:{CLIENT_IP} -all"))?;
    dns.add_txt(&format!("_dmarc.{DOMAIN}"), "v=DMARC1; p=reject")?;

    let before = dns.query_count();
    let helo = format!("mail.{DOMAIN}");
    let from = format!("bob@{DOMAIN}");
    let started = Instant::now();
    let scan = rspamd.scan(
        &message(),
        &[
            ("IP", CLIENT_IP),
            ("Helo", &helo),
            ("From", &from),
            ("Rcpt", "user@example.test"),
        ],
    )?;
    let elapsed = started.elapsed();
    let after = dns.query_count();
    println!(
        "scan: action {:?}, score {}, {elapsed:?}; stub answered {} queries during it",
        scan.action,
        scan.score,
        after - before
    );
    let mut seen: Vec<String> = dns
        .queries()
        .iter()
        .map(|q| format!("{} {}", q.type_name(), q.name))
        .collect();
    seen.sort();
    seen.dedup();
    println!("queries seen by the stub:\n  {}", seen.join("\n  "));

    assert!(!scan.action.is_empty(), "no action in {}", scan.json);
    assert!(
        after > before,
        "rspamd sent no DNS query to the stub during the scan"
    );
    let txt = dns.queries_for(DOMAIN);
    assert!(
        txt.iter().any(|q| q.type_name() == "TXT"),
        "no SPF TXT query for {DOMAIN}; stub saw:\n{seen:#?}"
    );
    assert!(
        dns.queries_for("7.100.51.198.in-addr.arpa")
            .iter()
            .any(|q| q.type_name() == "PTR"),
        "no PTR query for {CLIENT_IP}; stub saw:\n{seen:#?}"
    );
    // The stub's records, and nothing else, decided these results.
    assert!(
        scan.json.contains("\"R_SPF_ALLOW\""),
        "SPF from the stub's TXT record was not used: {}",
        scan.json
    );
    assert!(
        scan.json.contains("\"DMARC_POLICY_ALLOW\""),
        "DMARC from the stub's _dmarc record was not used: {}",
        scan.json
    );
    // No lookup failed or timed out: the stub answers everything at once.
    for fail in ["_FAIL\"", "DNSFAIL", "timed out"] {
        assert!(
            !scan.json.contains(fail),
            "a DNS lookup failed ({fail}): {}",
            scan.json
        );
    }
    assert_eq!(
        dns.malformed_count(),
        0,
        "rspamd sent packets the stub could not parse"
    );
    Ok(())
}
