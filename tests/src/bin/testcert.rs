//! `testcert DIR`: a certificate authority made now, and loopback server certificates it
//! issued, written into DIR (see [`TestCa::write_to`]), for the TLS tests.

use signalr_relay_tests::TestCa;

fn main() {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: testcert DIR");
        std::process::exit(2);
    };
    let written = TestCa::new()
        .map_err(Box::<dyn std::error::Error>::from)
        .and_then(|ca| ca.write_to(std::path::Path::new(&dir)));
    if let Err(e) = written {
        eprintln!("testcert: {e}");
        std::process::exit(1);
    }
}
