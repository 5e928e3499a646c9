//! NDJSON bodies: any bytes, parsed with the default limits and with tight ones.
#![no_main]

use edgelog_fuzz::{OPTIONS, check};
use edgelog_record::{Format, parse_body};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for opts in &OPTIONS {
        check(data, opts, &parse_body(Format::Ndjson, data, opts));
    }
});
