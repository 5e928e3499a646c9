//! W3C bodies: any bytes, parsed with the default limits and with tight ones, with and
//! without `?distribution=`.
#![no_main]

use edgelog_fuzz::{OPTIONS, check};
use edgelog_record::{Format, ParseOptions, parse_body};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for opts in &OPTIONS {
        check(data, opts, &parse_body(Format::W3c, data, opts));
    }
    let none = ParseOptions::default();
    check(data, &none, &parse_body(Format::W3c, data, &none));
});
