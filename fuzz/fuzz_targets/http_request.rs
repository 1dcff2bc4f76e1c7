//! Fuzzes the REST API's request-head parser with arbitrary client bytes, fed whole and in
//! input-chosen pieces (as a slow client sends them): it must return a head, "need more" or a
//! typed error, never panic, and never accept a head beyond its limits.

#![no_main]

use control::api::http::{parse_head, HeadLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = HeadLimits::default();
    let whole = parse_head(data, &limits);
    if let Ok(Some(head)) = &whole {
        let target = head.path.len() + head.query.as_ref().map_or(0, |q| q.len() + 1);
        assert!(target <= limits.target_bytes, "target over its limit");
        assert!(
            head.len <= limits.head_bytes && head.len <= data.len(),
            "head over its limit"
        );
        assert!(
            head.content_length <= limits.body_bytes,
            "body over its limit"
        );
    }
    // A client that sends the same bytes in pieces: every prefix gets an answer without a
    // panic, and the first complete head found is the one the whole input gives.
    let Some((&step, _)) = data.split_first() else {
        return;
    };
    let step = usize::from(step % 64) + 1;
    let mut end = 0;
    while end < data.len() {
        end = (end + step).min(data.len());
        match parse_head(&data[..end], &limits) {
            Ok(None) => continue,
            Ok(Some(head)) => {
                if let Ok(Some(w)) = &whole {
                    assert_eq!(
                        head.len, w.len,
                        "a prefix and the whole disagree on the head"
                    );
                }
                break;
            }
            Err(_) => break,
        }
    }
});
