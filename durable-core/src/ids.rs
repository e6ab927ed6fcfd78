//! Identifiers and time: [`InstanceId`], [`EntityId`] and [`Timestamp`].

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::InvalidInstanceId;

/// Longest instance id accepted, in characters.
pub const MAX_INSTANCE_ID_LEN: usize = 100;

/// The id of one orchestration instance.
///
/// Ids are 1–100 characters, contain no `/`, `\`, `#`, `?` or control characters, and do not
/// start with `@` (reserved for entities). [`InstanceId::new`] checks these rules.
///
/// # Examples
///
/// ```
/// use durable_core::InstanceId;
///
/// let id = InstanceId::new("order-42").unwrap();
/// assert_eq!(id.as_str(), "order-42");
/// assert!(InstanceId::new("a/b").is_err());
/// assert!(InstanceId::new("").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InstanceId(String);

impl InstanceId {
    /// Checks `id` against the instance-id rules and wraps it.
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidInstanceId> {
        let id = id.into();
        validate_instance_id(&id, false)?;
        Ok(Self(id))
    }

    /// Wraps an id that may use the `@` prefix reserved for system instances (entities).
    #[allow(
        dead_code,
        reason = "entity instance ids (`@name@key`) are built with it"
    )]
    pub(crate) fn new_system(id: impl Into<String>) -> Result<Self, InvalidInstanceId> {
        let id = id.into();
        validate_instance_id(&id, true)?;
        Ok(Self(id))
    }

    /// Wraps an id read back from storage, which was validated when it was written.
    pub(crate) fn from_trusted(id: String) -> Self {
        Self(id)
    }

    /// A fresh random id (a UUID v4 in simple form).
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn validate_instance_id(id: &str, allow_at: bool) -> Result<(), InvalidInstanceId> {
    let err = |reason: &'static str| {
        Err(InvalidInstanceId {
            id: id.chars().take(MAX_INSTANCE_ID_LEN + 10).collect(),
            reason,
        })
    };
    if id.is_empty() {
        return err("an instance id must not be empty");
    }
    if id.chars().count() > MAX_INSTANCE_ID_LEN {
        return err("an instance id must be at most 100 characters");
    }
    if id
        .chars()
        .any(|c| matches!(c, '/' | '\\' | '#' | '?') || c.is_control())
    {
        return err("an instance id must not contain `/`, `\\`, `#`, `?` or control characters");
    }
    if !allow_at && id.starts_with('@') {
        return err("instance ids starting with `@` are reserved for entities");
    }
    Ok(())
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for InstanceId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for InstanceId {
    type Error = InvalidInstanceId;
    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl TryFrom<String> for InstanceId {
    type Error = InvalidInstanceId;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

/// The address of one entity: its type name and a key.
///
/// Names are case-insensitive (stored lower-case). The backing instance id is
/// `@name@key`, which must follow the instance-id rules (at most 100 characters, no `/`,
/// `\`, `#`, `?` or control characters).
///
/// # Examples
///
/// ```
/// use durable_core::EntityId;
///
/// let id = EntityId::new("Counter", "page-views").unwrap();
/// assert_eq!(id.instance_id().as_str(), "@counter@page-views");
/// assert_eq!(EntityId::from_instance_id(&id.instance_id()), Some(id));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EntityId {
    /// Entity type name (lower-case).
    pub name: String,
    /// Entity key.
    pub key: String,
}

impl EntityId {
    /// An entity id; fails if the resulting instance id breaks the id rules.
    pub fn new(name: &str, key: &str) -> Result<Self, InvalidInstanceId> {
        let id = Self {
            name: name.to_lowercase(),
            key: key.to_owned(),
        };
        if id.name.is_empty() || id.name.contains('@') {
            return Err(InvalidInstanceId {
                id: format!("@{}@{key}", id.name),
                reason: "an entity name must be non-empty and must not contain `@`",
            });
        }
        InstanceId::new_system(id.instance_string())?;
        Ok(id)
    }

    fn instance_string(&self) -> String {
        format!("@{}@{}", self.name, self.key)
    }

    /// The backing instance id, `@name@key`.
    pub fn instance_id(&self) -> InstanceId {
        InstanceId::from_trusted(self.instance_string())
    }

    /// Parses an `@name@key` instance id.
    pub fn from_instance_id(id: &InstanceId) -> Option<Self> {
        let rest = id.as_str().strip_prefix('@')?;
        let (name, key) = rest.split_once('@')?;
        Some(Self {
            name: name.to_owned(),
            key: key.to_owned(),
        })
    }
}

impl fmt::Display for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "@{}@{}", self.name, self.key)
    }
}

/// A point in time: milliseconds since the Unix epoch, UTC.
///
/// Orchestration code never reads the wall clock; it gets [`Timestamp`]s from
/// `ctx.now()`, which is the recorded time of the current episode.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use durable_core::Timestamp;
///
/// let t = Timestamp::from_unix_millis(1_000);
/// assert_eq!((t + Duration::from_secs(2)).as_unix_millis(), 3_000);
/// assert_eq!(t.to_rfc3339(), "1970-01-01T00:00:01.000Z");
/// ```
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// A timestamp `millis` milliseconds after the Unix epoch.
    pub const fn from_unix_millis(millis: u64) -> Self {
        Self(millis)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_unix_millis(self) -> u64 {
        self.0
    }

    /// Converts a [`SystemTime`]; times before the epoch clamp to it.
    pub fn from_system_time(t: SystemTime) -> Self {
        Self(
            t.duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }

    /// Converts to a [`SystemTime`].
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }

    /// The time elapsed from `earlier` to `self`, or zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// `self + d`, saturating at the far future.
    pub fn saturating_add(self, d: Duration) -> Timestamp {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Timestamp(self.0.saturating_add(ms))
    }

    /// `self - d`, saturating at the epoch.
    ///
    /// ```
    /// use std::time::Duration;
    /// use durable_core::Timestamp;
    /// let t = Timestamp::from_unix_millis(5_000);
    /// assert_eq!(t.saturating_sub(Duration::from_secs(2)), Timestamp::from_unix_millis(3_000));
    /// assert_eq!(t.saturating_sub(Duration::from_secs(9)), Timestamp::EPOCH);
    /// ```
    pub fn saturating_sub(self, d: Duration) -> Timestamp {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Timestamp(self.0.saturating_sub(ms))
    }

    /// Formats as RFC 3339 / ISO 8601 in UTC with millisecond precision
    /// (`2024-05-01T12:00:00.000Z`), the shape Durable Functions' HTTP API uses.
    #[allow(clippy::many_single_char_names, clippy::cast_possible_wrap)]
    pub fn to_rfc3339(self) -> String {
        let ms = self.0 % 1000;
        let secs = self.0 / 1000;
        let days = secs / 86_400;
        let rem = secs % 86_400;
        let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
        let (y, mo, d) = civil_from_days(days as i64);
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z")
    }

    /// Parses RFC 3339 timestamps such as `2024-05-01T12:00:00Z`,
    /// `2024-05-01T12:00:00.123Z` or `2024-05-01T12:00:00+02:00`.
    pub fn parse_rfc3339(text: &str) -> Option<Timestamp> {
        let text = text.trim();
        let (date, time) = text.split_once(['T', 't', ' '])?;
        let mut dp = date.splitn(3, '-');
        let y: i64 = dp.next()?.parse().ok()?;
        // Four-digit years only (RFC 3339): the arithmetic below cannot overflow.
        if !(0..=9999).contains(&y) {
            return None;
        }
        let mo: u32 = dp.next()?.parse().ok()?;
        let d: u32 = dp.next()?.parse().ok()?;
        if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) {
            return None;
        }
        // Split off the zone designator.
        let (clock, offset_secs) = if let Some(c) = time.strip_suffix(['Z', 'z']) {
            (c, 0i64)
        } else if let Some(pos) = time.rfind(['+', '-']) {
            let (c, z) = time.split_at(pos);
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let (zh, zm) = z[1..].split_once(':').unwrap_or((&z[1..], "0"));
            let zh: i64 = zh.parse().ok()?;
            let zm: i64 = zm.parse().ok()?;
            if !(0..=23).contains(&zh) || !(0..=59).contains(&zm) {
                return None;
            }
            (c, sign * (zh * 3600 + zm * 60))
        } else {
            (time, 0)
        };
        let mut cp = clock.splitn(3, ':');
        let h: i64 = cp.next()?.parse().ok()?;
        let mi: i64 = cp.next()?.parse().ok()?;
        let sec_text = cp.next().unwrap_or("0");
        let (s_whole, frac) = sec_text.split_once('.').unwrap_or((sec_text, ""));
        let s: i64 = s_whole.parse().ok()?;
        if !frac.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let mut ms = 0i64;
        for (i, c) in frac.chars().take(3).enumerate() {
            ms += i64::from(c.to_digit(10)?) * [100, 10, 1][i];
        }
        if !(0..=23).contains(&h) || !(0..=59).contains(&mi) || !(0..=60).contains(&s) {
            return None;
        }
        let days = days_from_civil(y, mo, d);
        let total = ((days * 86_400 + h * 3600 + mi * 60 + s) - offset_secs) * 1000 + ms;
        u64::try_from(total).ok().map(Timestamp)
    }
}

impl std::ops::Add<Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, rhs: Duration) -> Timestamp {
        self.saturating_add(rhs)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

/// Days in month `m` (1–12) of year `y`, proleptic Gregorian.
fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

// Howard Hinnant's civil-calendar algorithms (public domain), used so the core needs no
// date-time crate for its one formatting need.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips() {
        for ms in [0u64, 1_700_000_000_123, 951_782_400_000, 4_102_444_800_999] {
            let t = Timestamp::from_unix_millis(ms);
            assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339()), Some(t));
        }
        assert_eq!(
            Timestamp::parse_rfc3339("2024-02-29T12:30:00+02:00")
                .unwrap()
                .to_rfc3339(),
            "2024-02-29T10:30:00.000Z"
        );
        assert_eq!(Timestamp::parse_rfc3339("nonsense"), None);
    }

    #[test]
    fn impossible_dates_and_times_are_refused() {
        for bad in [
            "2026-02-31T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2024-04-31T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:60:00Z",
            "2024-01-01T00:00:00+99:99",
            "2024-01-01T00:00:00+02:60",
            "2024-01-01T00:00:00.12xZ",
            "2024-01-01T-1:00:00Z",
            "99999999999999-01-01T00:00:00Z",
            "10000-01-01T00:00:00Z",
            "-1-01-01T00:00:00Z",
        ] {
            assert_eq!(Timestamp::parse_rfc3339(bad), None, "{bad}");
        }
        assert!(Timestamp::parse_rfc3339("2024-02-29T00:00:00Z").is_some());
        assert!(Timestamp::parse_rfc3339("2000-02-29T00:00:00Z").is_some());
        assert!(Timestamp::parse_rfc3339("2024-01-01T00:00:00.123456Z").is_some());
    }

    #[test]
    fn instance_id_rules() {
        assert!(InstanceId::new("x".repeat(100)).is_ok());
        assert!(InstanceId::new("x".repeat(101)).is_err());
        for bad in ["a#b", "a?b", "a\\b", "a\nb", "@counter@k"] {
            assert!(InstanceId::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(InstanceId::new_system("@counter@k").is_ok());
    }
}
