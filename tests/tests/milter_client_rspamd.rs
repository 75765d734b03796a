//! milter-core's MTA-side client against Rspamd's proxy in milter mode: GTUBE is rejected
//! with rspamd's reply text, a clean message is accepted with rspamd's headers.

use milter_core::client::{ClientConfig, Envelope, MilterClient};
use stack_tests::rspamd::Rspamd;

type R = anyhow::Result<()>;

const GTUBE: &[u8] = b"From: Spammer <spammer@remote.test>\r\n\
To: user@example.test\r\n\
Subject: gtube via milter-core\r\n\
Date: Thu, 27 Nov 2025 10:00:00 +0000\r\n\
Message-ID: <gtube-client@remote.test>\r\n\
\r\n\
XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n";

const CLEAN: &[u8] = b"From: Alice <alice@remote.test>\r\n\
To: user@example.test\r\n\
Subject: hello via milter-core\r\n\
Date: Thu, 27 Nov 2025 10:00:00 +0000\r\n\
Message-ID: <clean-client@remote.test>\r\n\
\r\n\
Just a normal message.\r\n";

#[test]
fn gtube_is_rejected_with_rspamds_reply_and_clean_mail_is_accepted() -> R {
    let rspamd = Rspamd::builder().start()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let envelope = Envelope {
        client_name: Some("client.remote.test".into()),
        helo: "client.remote.test".into(),
        sender: "spammer@remote.test".into(),
        recipients: vec!["user@example.test".into()],
        ..Envelope::default()
    };
    let (gtube, clean) = rt.block_on(async {
        let mut client =
            MilterClient::connect(&rspamd.milter_spec(), ClientConfig::default()).await?;
        let gtube = client.send(&envelope, GTUBE).await?;
        let clean_env = Envelope {
            sender: "alice@remote.test".into(),
            ..envelope.clone()
        };
        let clean = client.send(&clean_env, CLEAN).await?;
        client.quit().await?;
        anyhow::Ok((gtube, clean))
    })?;
    println!(
        "GTUBE: {:?} at {}; stages {:?}",
        gtube.verdict, gtube.final_stage, gtube.stages
    );
    gtube.assert_reply("554 5.7.1 Gtube pattern");
    assert!(gtube.rejected());
    assert_eq!(gtube.final_stage, "EOM");

    println!(
        "clean: {:?}; modifications {:?}",
        clean.verdict, clean.modifications
    );
    clean.assert_accepted();
    clean.assert_header_added("X-Spamd-Result");
    Ok(())
}
