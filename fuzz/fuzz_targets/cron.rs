//! Cron expressions of policy schedules (`haven-coordinator`): parsed, and the next
//! firing found from a few instants; a firing is always later, on a whole minute and
//! matching.
#![no_main]

use haven_coordinator::cron::Schedule;
use time::OffsetDateTime;

libfuzzer_sys::fuzz_target!(
    init: haven_fuzz::seeds::write_if_asked("cron"),
    |data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let Ok(cron) = Schedule::parse(text) else {
            return;
        };
        for seconds in [0i64, 1_798_761_599, 1_800_000_000] {
            let after = OffsetDateTime::from_unix_timestamp(seconds).expect("a time");
            if let Some(next) = cron.next_after(after) {
                assert!(next > after, "{text:?}: {next} is not after {after}");
                assert_eq!(next.second(), 0, "{text:?}: {next}");
                assert!(cron.matches(next), "{text:?}: {next} does not match");
            }
        }
        let _ = cron.longest_gap();
    }
);
