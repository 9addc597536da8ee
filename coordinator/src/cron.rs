//! Five-field cron schedules (`minute hour day-of-month month day-of-week`), in UTC.
//!
//! Policies say when backups are due with the notation every operator knows. Supported:
//! `*`, numbers, ranges `a-b`, steps `*/n` and `a-b/n`, lists `a,b,c`, and Sunday as 0
//! or 7. As in Vixie cron, when both day fields are restricted a day matches if
//! either does. Times are UTC: a coordinator cluster spans time zones and daylight
//! saving would make "the 02:30 backup" happen twice or never.

use time::{Duration, OffsetDateTime, Time};

/// Firings [`Schedule::longest_gap`] looks at, at most: enough for a week of a
/// schedule that fires every five minutes.
const GAP_SAMPLE_FIRINGS: usize = 2100;

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    days_restricted: bool,
    weekdays_restricted: bool,
}

impl Schedule {
    /// Parses `expression`; the error says which field is wrong and why.
    pub fn parse(expression: &str) -> Result<Self, String> {
        let fields: Vec<&str> = expression.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields.as_slice() else {
            return Err(format!(
                "cron schedule {expression:?} must have 5 fields (minute hour day month weekday), found {}",
                fields.len()
            ));
        };
        let mut weekdays = field(weekday, "day of week", 0, 7)?;
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays & !(1 << 7)) | 1;
        }
        Ok(Self {
            minutes: field(minute, "minute", 0, 59)?,
            hours: field(hour, "hour", 0, 23)?,
            days: field(day, "day of month", 1, 31)?,
            months: field(month, "month", 1, 12)?,
            weekdays,
            days_restricted: *day != "*",
            weekdays_restricted: *weekday != "*",
        })
    }

    /// Whether the schedule fires in the minute that contains `at`.
    pub fn matches(&self, at: OffsetDateTime) -> bool {
        bit(self.minutes, at.minute().into())
            && bit(self.hours, at.hour().into())
            && bit(self.months, u8::from(at.month()).into())
            && self.day_allowed(at)
    }

    /// The first firing minute strictly after `after`, searched up to about five
    /// years ahead (`None` for schedules like `0 0 31 2 *` that never fire).
    pub fn next_after(&self, after: OffsetDateTime) -> Option<OffsetDateTime> {
        let start = after.replace_second(0).ok()?.replace_nanosecond(0).ok()? + Duration::MINUTE;
        let mut at = start;
        let limit = start + Duration::days(5 * 366);
        while at < limit {
            if !bit(self.months, u8::from(at.month()).into()) || !self.day_allowed(at) {
                at = (at.date().next_day()?)
                    .with_time(Time::MIDNIGHT)
                    .assume_utc();
                continue;
            }
            if !bit(self.hours, at.hour().into()) {
                at = at.replace_minute(0).ok()? + Duration::HOUR;
                continue;
            }
            if bit(self.minutes, at.minute().into()) {
                return Some(at);
            }
            at += Duration::MINUTE;
        }
        None
    }

    /// The longest time between two consecutive firings, over a year of firings (at
    /// most [`GAP_SAMPLE_FIRINGS`]) from a fixed Monday, so the answer does not depend
    /// on when it is asked; `None` if the schedule fires fewer than twice in a year.
    /// Policies derive their default RPO from it.
    pub fn longest_gap(&self) -> Option<Duration> {
        let start = time::macros::datetime!(2024-01-01 00:00 UTC);
        let end = start + Duration::days(366);
        let mut previous = self.next_after(start - Duration::MINUTE)?;
        let mut longest: Option<Duration> = None;
        for _ in 0..GAP_SAMPLE_FIRINGS {
            let Some(next) = self.next_after(previous) else {
                break;
            };
            longest = Some(longest.map_or(next - previous, |gap| gap.max(next - previous)));
            if next > end {
                break;
            }
            previous = next;
        }
        longest
    }

    fn day_allowed(&self, at: OffsetDateTime) -> bool {
        let day_ok = bit(self.days, at.day().into());
        let weekday_ok = bit(self.weekdays, at.weekday().number_days_from_sunday().into());
        match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => day_ok || weekday_ok,
            (true, false) => day_ok,
            (false, true) => weekday_ok,
            (false, false) => true,
        }
    }
}

fn bit(set: u64, value: u64) -> bool {
    set & (1 << value) != 0
}

/// Parses one field into a bit set of allowed values.
fn field(text: &str, name: &str, min: u64, max: u64) -> Result<u64, String> {
    let mut set = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => {
                let step: u64 = step
                    .parse()
                    .map_err(|_| format!("{name}: bad step {step:?} in {text:?}"))?;
                if step == 0 {
                    return Err(format!("{name}: step 0 in {text:?}"));
                }
                (range, step)
            }
            None => (part, 1),
        };
        let (low, high) = if range == "*" {
            (min, max)
        } else if let Some((low, high)) = range.split_once('-') {
            (number(low, name, min, max)?, number(high, name, min, max)?)
        } else {
            let value = number(range, name, min, max)?;
            (value, if part.contains('/') { max } else { value })
        };
        if low > high {
            return Err(format!("{name}: range {range:?} runs backwards"));
        }
        let mut value = low;
        while value <= high {
            set |= 1 << value;
            value += step;
        }
    }
    Ok(set)
}

fn number(text: &str, name: &str, min: u64, max: u64) -> Result<u64, String> {
    let value: u64 = text
        .parse()
        .map_err(|_| format!("{name}: {text:?} is not a number"))?;
    if !(min..=max).contains(&value) {
        return Err(format!("{name}: {value} is outside {min}-{max}"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    fn next(expression: &str, after: OffsetDateTime) -> OffsetDateTime {
        Schedule::parse(expression)
            .unwrap()
            .next_after(after)
            .unwrap()
    }

    #[test]
    fn the_longest_gap_spans_weekends_months_and_uneven_steps() {
        let gap = |expression: &str| {
            Schedule::parse(expression)
                .unwrap()
                .longest_gap()
                .map(|gap| gap.whole_minutes())
        };
        assert_eq!(gap("* * * * *"), Some(1));
        assert_eq!(gap("*/5 * * * *"), Some(5));
        assert_eq!(gap("0 */6 * * *"), Some(6 * 60));
        // 00:00 and 20:00: the gap from 20:00 to midnight is 4 h, the other 20 h.
        assert_eq!(gap("0 0,20 * * *"), Some(20 * 60));
        // Weekdays at 03:00: Friday to Monday.
        assert_eq!(gap("0 3 * * 1-5"), Some(3 * 24 * 60));
        // The 1st of each month: 31 days at most.
        assert_eq!(gap("0 0 1 * *"), Some(31 * 24 * 60));
        assert_eq!(gap("0 0 31 2 *"), None);
    }

    #[test]
    fn every_minute_and_steps() {
        let t = datetime!(2026-11-25 10:17:42 UTC);
        assert_eq!(next("* * * * *", t), datetime!(2026-11-25 10:18 UTC));
        assert_eq!(next("*/15 * * * *", t), datetime!(2026-11-25 10:30 UTC));
        assert_eq!(next("5 */6 * * *", t), datetime!(2026-11-25 12:05 UTC));
        assert_eq!(next("0 2 * * *", t), datetime!(2026-11-26 02:00 UTC));
        assert_eq!(next("10-20/5 * * * *", t), datetime!(2026-11-25 10:20 UTC));
    }

    #[test]
    fn days_months_and_weekdays() {
        let t = datetime!(2026-11-25 10:00 UTC); // a Wednesday
        assert_eq!(next("0 0 1 * *", t), datetime!(2026-12-01 00:00 UTC));
        assert_eq!(next("0 0 * * 0", t), datetime!(2026-11-29 00:00 UTC));
        assert_eq!(next("0 0 * * 7", t), datetime!(2026-11-29 00:00 UTC));
        assert_eq!(next("0 3 * 2 1-5", t), datetime!(2027-02-01 03:00 UTC));
        // Both day fields restricted: either matches (the 1st, or a Friday).
        assert_eq!(next("0 0 1 * 5", t), datetime!(2026-11-27 00:00 UTC));
        assert_eq!(next("0 0 29 2 *", t), datetime!(2028-02-29 00:00 UTC));
        assert!(
            Schedule::parse("0 0 31 2 *")
                .unwrap()
                .next_after(t)
                .is_none()
        );
    }

    #[test]
    fn matches_agrees_with_next() {
        let s = Schedule::parse("30 4 * * 1").unwrap();
        let at = s.next_after(datetime!(2026-11-25 00:00 UTC)).unwrap();
        assert!(s.matches(at));
        assert!(!s.matches(at + Duration::MINUTE));
    }

    #[test]
    fn errors_name_the_field() {
        for (bad, needle) in [
            ("* * * *", "5 fields"),
            ("60 * * * *", "minute: 60 is outside"),
            ("* 24 * * *", "hour"),
            ("* * 0 * *", "day of month"),
            ("* * * 13 *", "month"),
            ("* * * * 8", "day of week"),
            ("*/0 * * * *", "step 0"),
            ("5-1 * * * *", "backwards"),
            ("a * * * *", "not a number"),
        ] {
            let error = Schedule::parse(bad).unwrap_err();
            assert!(error.contains(needle), "{bad}: {error}");
        }
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use time::{Duration, OffsetDateTime};

    use super::Schedule;

    /// One field: `*`, a number, a range, a step or a list of those, within `min..=max`.
    fn field(min: u32, max: u32) -> impl Strategy<Value = String> {
        let item = prop_oneof![
            (min..=max).prop_map(|n| n.to_string()),
            (min..=max, min..=max).prop_map(|(a, b)| format!("{}-{}", a.min(b), a.max(b))),
            (1..=max.max(2)).prop_map(|n| format!("*/{n}")),
            (min..=max, min..=max, 1..=5u32).prop_map(|(a, b, n)| format!(
                "{}-{}/{n}",
                a.min(b),
                a.max(b)
            )),
        ];
        prop_oneof![
            1 => Just("*".to_string()),
            3 => proptest::collection::vec(item, 1..3).prop_map(|items| items.join(",")),
        ]
    }

    fn schedule() -> impl Strategy<Value = String> {
        (
            field(0, 59),
            field(0, 23),
            field(1, 31),
            field(1, 12),
            field(0, 7),
        )
            .prop_map(|(m, h, d, mo, w)| format!("{m} {h} {d} {mo} {w}"))
    }

    proptest! {
        /// The next firing is a minute after `after` that matches, and no minute
        /// between them matches (checked over the first three days).
        #[test]
        fn next_after_is_the_first_match(expression in schedule(), minutes in 0i64..4_000_000) {
            let schedule = Schedule::parse(&expression).unwrap();
            let after = OffsetDateTime::from_unix_timestamp(1_700_000_000 + minutes * 60 + 17).unwrap();
            let next = schedule.next_after(after);
            if let Some(next) = next {
                prop_assert!(next > after);
                prop_assert_eq!(next.second(), 0);
                prop_assert!(schedule.matches(next), "{} does not match {}", next, expression);
            }
            let mut at = after.replace_second(0).unwrap().replace_nanosecond(0).unwrap() + Duration::MINUTE;
            let horizon = after + Duration::days(3);
            while at < horizon && next.is_none_or(|next| at < next) {
                prop_assert!(!schedule.matches(at), "{} matches {} before {:?}", at, expression, next);
                at += Duration::MINUTE;
            }
        }

        /// Any text is parsed or refused with a message, never a panic.
        #[test]
        fn any_text_parses_or_is_refused(text in "[0-9*/,\\- a-z]{0,40}") {
            let _ = Schedule::parse(&text);
        }
    }
}
