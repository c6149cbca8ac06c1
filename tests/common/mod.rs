//! The shared test harness: the library's test kit (`airlock::testkit`, which the benchmark tool
//! uses too). It starts the real `airlock` binary on port 0 with a temporary `AIRLOCK_HOME` and
//! talks to it over HTTP as an agent would; `AIRLOCK_TEST_BACKEND=postgres` (with
//! `AIRLOCK_TEST_POSTGRES`) puts every daemon on a database of its own.
#![allow(unused_imports)]

pub use airlock::testkit::*;
