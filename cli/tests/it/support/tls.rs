//! X.509 credentials in QEMU's directory layout, made with `openssl`: `haven_testkit`'s
//! [`Credentials`] (a CA, a server directory, a client of the CA, a client of another
//! CA and one without a certificate); `haven_testkit::tls::TestCa` issues others.

pub use haven_testkit::tls::Credentials;
