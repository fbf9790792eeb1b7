//! `server::range::parse`: a client's `Range` header against a cached blob's
//! size. Input: 8 bytes of size (little endian), then the header value.
//! Properties: no panic; a part is never empty and never reaches past the
//! end of the blob; an empty blob never yields a part.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf::server::range::{parse, RangeReq};

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (size, header) = data.split_at(8);
    let size = u64::from_le_bytes(size.try_into().expect("8 bytes"));
    let Ok(header) = std::str::from_utf8(header) else {
        return;
    };
    // Small sizes too, where the edge cases are.
    for size in [size, size % 4096, 0, 1] {
        match parse(Some(header), size) {
            RangeReq::Part { start, len } => {
                assert!(len > 0, "{header:?} on {size}: empty part");
                let end = start.checked_add(len).expect("end overflows");
                assert!(
                    end <= size,
                    "{header:?} on {size}: {start}+{len} past the end"
                );
            }
            RangeReq::Full | RangeReq::Unsatisfiable => {}
        }
    }
});
