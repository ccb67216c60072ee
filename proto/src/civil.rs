//! Civil (proleptic Gregorian, UTC) dates from and to days since the Unix epoch, so the pure parts of the
//! protocol (Hubble's timestamps, the verdict log's backup names) print and read times without a date
//! library (Howard Hinnant's algorithms).

/// Days since 1970-01-01 to (year, month, day).
pub(crate) fn from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// (year, month, day) to days since 1970-01-01; the inverse of [`from_days`] for valid dates.
pub(crate) fn to_days(year: i64, month: u32, day: u32) -> i64 {
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_round_trip_across_leap_years_and_eras() {
        for days in [-800_000, -1, 0, 59, 60, 11_016, 19_844, 19_845, 2_932_896] {
            let (y, m, d) = from_days(days);
            assert_eq!(to_days(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(from_days(19_844), (2024, 5, 1));
    }
}
