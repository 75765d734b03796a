//! Header and body payloads reach the handler as views into the frame the server read,
//! not as copies: the `Bytes` a callback gets point into the decoded frame.

use std::sync::{Arc, Mutex};

use milter_core::handler::{Context, Milter};
use milter_core::testing::{Transcript, pair};
use milter_core::{Bytes, Verdict};

#[derive(Debug, Default)]
struct Found {
    /// Per header: the value starts one byte (the NUL) after the name ends.
    value_follows_name: Vec<bool>,
    /// Per payload: it shares its allocation with something (the read buffer) while
    /// the handler holds it. A copy made for the handler would be its only owner.
    shared: Vec<bool>,
    /// The body chunks, kept as handed over.
    chunks: Vec<Bytes>,
}

struct Keeper(Arc<Mutex<Found>>);

impl Milter for Keeper {
    async fn header(&mut self, _ctx: &Context<'_>, name: Bytes, value: Bytes) -> Verdict {
        let mut f = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let after_name = name.as_ptr().wrapping_add(name.len() + 1);
        f.value_follows_name.push(value.as_ptr() == after_name);
        f.shared.push(!name.is_unique() && !value.is_unique());
        Verdict::Continue
    }

    async fn body(&mut self, _ctx: &Context<'_>, chunk: Bytes) -> Verdict {
        let mut f = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f.shared.push(!chunk.is_unique());
        f.chunks.push(chunk);
        Verdict::Continue
    }
}

#[tokio::test]
async fn header_and_body_are_slices_of_the_frame() {
    let found = Arc::new(Mutex::new(Found::default()));
    let f = found.clone();
    let mut pair = pair(move || Keeper(f.clone())).await.expect("pair");
    // Two body chunks: the client splits bodies at 65535 bytes.
    let body: Vec<u8> = (0..70_000).map(|i| b"abcdefghij\r\n"[i % 12]).collect();
    let tx = Transcript::new()
        .from("a@example.org")
        .to("b@example.org")
        .header("Subject", "hello")
        .header("X-Long", "a value of some length")
        .body(body.clone())
        .build();
    pair.send(&tx).await.expect("send").assert_accepted();
    pair.finish().await.expect("finish");

    let f = found.lock().unwrap_or_else(|e| e.into_inner());
    assert_eq!(f.value_follows_name, [true, true], "{f:?}");
    assert_eq!(f.shared.len(), 4, "two headers, two body chunks: {f:?}");
    assert!(f.shared.iter().all(|s| *s), "{:?}", f.shared);
    // Kept chunks are the body, byte for byte.
    assert_eq!(f.chunks.len(), 2);
    assert_eq!(f.chunks.concat(), body);
}
