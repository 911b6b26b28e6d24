//! The values a view filters and sorts on, compared exactly as PostgreSQL compares them.
//!
//! A view's window is kept in Rust from the rows as the capture trigger renders them (`to_jsonb`
//! in a UTC session), yet PROTOCOL §9 promises the rows a `where … order by …` would return. So
//! every comparison here is PostgreSQL's btree order for the column's type, and every filter op
//! has a SQL twin ([`Op::to_sql`]) that the differential test (tests/it/views_values.rs) holds
//! against [`Op::test`]. Text compares by code point, as `COLLATE "C"`: a collation's order is
//! ICU's or glibc's code, which Rust cannot reproduce, and would differ between servers anyway.

use std::cmp::Ordering;

/// Column types a view may filter and sort on (built-in types only: a user type's operators and
/// casts would be code we cannot mirror, and would run as pgfeed's role).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ColType {
    SmallInt,
    Integer,
    BigInt,
    Real,
    Double,
    Numeric,
    Text,
    Varchar,
    Boolean,
    Timestamptz,
    Timestamp,
    Date,
    Uuid,
}

impl ColType {
    pub const ALL: [ColType; 13] = [
        ColType::SmallInt,
        ColType::Integer,
        ColType::BigInt,
        ColType::Real,
        ColType::Double,
        ColType::Numeric,
        ColType::Text,
        ColType::Varchar,
        ColType::Boolean,
        ColType::Timestamptz,
        ColType::Timestamp,
        ColType::Date,
        ColType::Uuid,
    ];

    /// From `format_type(atttypid, NULL)` ("bigint", "character varying", "timestamp with time zone", …); None = unsupported.
    pub fn from_pg(name: &str) -> Option<ColType> {
        Some(match name {
            "smallint" => ColType::SmallInt,
            "integer" => ColType::Integer,
            "bigint" => ColType::BigInt,
            "real" => ColType::Real,
            "double precision" => ColType::Double,
            "numeric" => ColType::Numeric,
            "text" => ColType::Text,
            "character varying" => ColType::Varchar,
            "boolean" => ColType::Boolean,
            "timestamp with time zone" => ColType::Timestamptz,
            "timestamp without time zone" => ColType::Timestamp,
            "date" => ColType::Date,
            "uuid" => ColType::Uuid,
            // `character` (bpchar) is not here: it compares ignoring trailing spaces.
            _ => return None,
        })
    }

    /// The name to cast to in SQL ("bigint", "timestamptz", "text", …).
    pub fn sql(self) -> &'static str {
        match self {
            ColType::SmallInt => "smallint",
            ColType::Integer => "integer",
            ColType::BigInt => "bigint",
            ColType::Real => "real",
            ColType::Double => "double precision",
            ColType::Numeric => "numeric",
            ColType::Text => "text",
            ColType::Varchar => "varchar",
            ColType::Boolean => "boolean",
            ColType::Timestamptz => "timestamptz",
            ColType::Timestamp => "timestamp",
            ColType::Date => "date",
            ColType::Uuid => "uuid",
        }
    }

    fn is_text(self) -> bool {
        matches!(self, ColType::Text | ColType::Varchar)
    }
}

/// One column value, as PostgreSQL compares it.
#[derive(Debug, Clone)]
pub enum Val {
    Null,
    /// smallint, integer, bigint.
    Int(i64),
    /// real (widened exactly) and double precision.
    Float(f64),
    Numeric(Numeric),
    /// text and varchar.
    Text(String),
    Bool(bool),
    /// timestamptz (the instant) and timestamp: microseconds from 2000-01-01 00:00, with
    /// `-infinity`/`infinity` at `i64::MIN`/`i64::MAX` (PostgreSQL's own encoding).
    Time(i64),
    /// Days from 2000-01-01, with the infinities at `i32::MIN`/`i32::MAX`.
    Date(i32),
    /// The 16 bytes big-endian, so that integer order is PostgreSQL's `memcmp` order.
    Uuid(u128),
}

/// A numeric in PostgreSQL's order: `-Infinity` < every number < `Infinity` < `NaN` (the variant
/// order, which the derived `Ord` follows).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Numeric {
    NegInfinity,
    Finite(Decimal),
    Infinity,
    NaN,
}

/// A finite decimal by value only (`1.50` = `1.5`): 0.`digits` × 10^`exp`, with no leading or
/// trailing zero digits; zero is no digits, exponent 0 and not negative.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decimal {
    negative: bool,
    digits: Box<[u8]>,
    exp: i64,
}

impl Decimal {
    fn sign(&self) -> i8 {
        match (self.digits.is_empty(), self.negative) {
            (true, _) => 0,
            (false, true) => -1,
            (false, false) => 1,
        }
    }
}

impl Ord for Decimal {
    fn cmp(&self, other: &Self) -> Ordering {
        let sign = self.sign().cmp(&other.sign());
        if sign != Ordering::Equal {
            return sign;
        }
        // Normalized, so a larger exponent is a larger magnitude; on equal exponents the digits
        // compare as a fraction would (a shorter prefix is smaller).
        let magnitude = self.exp.cmp(&other.exp).then_with(|| self.digits.cmp(&other.digits));
        if self.negative {
            magnitude.reverse()
        } else {
            magnitude
        }
    }
}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadValue(String);

impl BadValue {
    fn new(ty: ColType, raw: &str) -> BadValue {
        BadValue(format!("{raw:?} is not a {} value as to_jsonb renders it", ty.sql()))
    }
}

impl Val {
    /// The value of a column of type `ty` from its JSON text exactly as `to_jsonb` renders it in a
    /// session whose TimeZone is UTC (`null`, `42`, `12.50`, `"NaN"`, `"2026-12-06T07:10:50.12+00:00"`,
    /// `"infinity"`, `true`, `"a0ee…"`). Err for JSON that type never renders.
    pub fn from_json(ty: ColType, raw: &str) -> Result<Val, BadValue> {
        let raw = raw.trim_matches(|c: char| c.is_ascii_whitespace());
        if raw == "null" {
            return Ok(Val::Null);
        }
        let bad = || BadValue::new(ty, raw);
        let string = || -> Result<String, BadValue> {
            if raw.starts_with('"') {
                serde_json::from_str::<String>(raw).map_err(|_| bad())
            } else {
                Err(bad())
            }
        };
        match ty {
            ColType::SmallInt | ColType::Integer | ColType::BigInt => {
                let n = integer(raw).ok_or_else(bad)?;
                let (min, max) = match ty {
                    ColType::SmallInt => (i16::MIN.into(), i16::MAX.into()),
                    ColType::Integer => (i32::MIN.into(), i32::MAX.into()),
                    _ => (i64::MIN, i64::MAX),
                };
                if (min..=max).contains(&n) {
                    Ok(Val::Int(n))
                } else {
                    Err(bad())
                }
            }
            ColType::Real | ColType::Double => {
                // Non-finite floats are no JSON numbers, so `to_jsonb` writes them as strings.
                let x = match raw {
                    "\"NaN\"" => f64::NAN,
                    "\"Infinity\"" => f64::INFINITY,
                    "\"-Infinity\"" => f64::NEG_INFINITY,
                    _ if decimal(raw).is_none() => return Err(bad()),
                    // The shortest text that reads back as the same float4: read it as a float4,
                    // not as a double that merely lies near it.
                    _ if ty == ColType::Real => f64::from(raw.parse::<f32>().map_err(|_| bad())?),
                    _ => raw.parse::<f64>().map_err(|_| bad())?,
                };
                if x.is_infinite() && !raw.starts_with('"') {
                    return Err(bad());
                }
                Ok(Val::Float(x))
            }
            ColType::Numeric => Ok(Val::Numeric(match raw {
                "\"NaN\"" => Numeric::NaN,
                "\"Infinity\"" => Numeric::Infinity,
                "\"-Infinity\"" => Numeric::NegInfinity,
                _ => Numeric::Finite(decimal(raw).ok_or_else(bad)?),
            })),
            ColType::Text | ColType::Varchar => Ok(Val::Text(string()?)),
            ColType::Boolean => match raw {
                "true" => Ok(Val::Bool(true)),
                "false" => Ok(Val::Bool(false)),
                _ => Err(bad()),
            },
            ColType::Timestamptz | ColType::Timestamp => {
                let s = string()?;
                let t = match s.as_str() {
                    "-infinity" => i64::MIN,
                    "infinity" => i64::MAX,
                    _ => timestamp(&s, ty == ColType::Timestamptz).ok_or_else(bad)?,
                };
                Ok(Val::Time(t))
            }
            ColType::Date => {
                let s = string()?;
                let d = match s.as_str() {
                    "-infinity" => i32::MIN,
                    "infinity" => i32::MAX,
                    _ => {
                        let (body, bc) = strip_bc(&s);
                        let (days, rest) = date(body, bc).ok_or_else(bad)?;
                        if !rest.is_empty() {
                            return Err(bad());
                        }
                        i32::try_from(days).map_err(|_| bad())?
                    }
                };
                Ok(Val::Date(d))
            }
            ColType::Uuid => uuid(&string()?).map(Val::Uuid).ok_or_else(bad),
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Val::Null)
    }

    /// Orders values of different kinds, which one column never holds; NULL last.
    fn kind(&self) -> u8 {
        match self {
            Val::Int(_) => 0,
            Val::Float(_) => 1,
            Val::Numeric(_) => 2,
            Val::Text(_) => 3,
            Val::Bool(_) => 4,
            Val::Time(_) => 5,
            Val::Date(_) => 6,
            Val::Uuid(_) => 7,
            Val::Null => 8,
        }
    }
}

/// PostgreSQL's btree order of two NON-NULL values of the same column type: text by code point
/// (as `COLLATE "C"`), NaN above every number and equal to itself, -0 = 0, ±infinity at the ends,
/// numeric by value (1.50 = 1.5), timestamps by instant. (NULL placement is the caller's.)
pub fn cmp(a: &Val, b: &Val) -> Ordering {
    match (a, b) {
        (Val::Int(a), Val::Int(b)) => a.cmp(b),
        (Val::Float(a), Val::Float(b)) => match (a.is_nan(), b.is_nan()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            // Equal for -0 and 0, as in PostgreSQL.
            (false, false) => a.partial_cmp(b).expect("no NaN"),
        },
        (Val::Numeric(a), Val::Numeric(b)) => a.cmp(b),
        // UTF-8 byte order is code point order, and `COLLATE "C"` is `memcmp`.
        (Val::Text(a), Val::Text(b)) => a.as_bytes().cmp(b.as_bytes()),
        (Val::Bool(a), Val::Bool(b)) => a.cmp(b),
        (Val::Time(a), Val::Time(b)) => a.cmp(b),
        (Val::Date(a), Val::Date(b)) => a.cmp(b),
        (Val::Uuid(a), Val::Uuid(b)) => a.cmp(b),
        _ => a.kind().cmp(&b.kind()),
    }
}

/// A literal of a filter: its value, and its JSON text as `to_jsonb` rendered it (see db::literals).
#[derive(Debug, Clone)]
pub struct Lit {
    pub val: Val,
    pub json: String,
}

/// A filter operation of PROTOCOL §9 on one column.
#[derive(Debug, Clone)]
pub enum Op {
    Eq(Lit),
    Neq(Lit),
    Lt(Lit),
    Lte(Lit),
    Gt(Lit),
    Gte(Lit),
    In(Vec<Lit>),
    IsNull,
    NotNull,
    IsTrue,
    IsFalse,
    /// `*` is the only wildcard; every other character (also % _ \) is literal.
    Like(String),
    ILike(String),
}

impl Op {
    /// Whether a column value passes, with SQL semantics: a NULL passes only `IsNull` (so
    /// `neq`, `not.is.null`... are false on NULL as in SQL's WHERE); `IsTrue`/`IsFalse` only on a
    /// boolean true/false; like/ilike only on text, ilike folding ASCII letters only (as
    /// PostgreSQL's ILIKE under COLLATE "C").
    pub fn test(&self, v: &Val) -> bool {
        if v.is_null() {
            return matches!(self, Op::IsNull);
        }
        // A comparison with NULL is NULL, which WHERE takes as false.
        let compare = |lit: &Lit, pass: fn(Ordering) -> bool| !lit.val.is_null() && pass(cmp(v, &lit.val));
        match self {
            Op::Eq(lit) => compare(lit, Ordering::is_eq),
            Op::Neq(lit) => compare(lit, Ordering::is_ne),
            Op::Lt(lit) => compare(lit, Ordering::is_lt),
            Op::Lte(lit) => compare(lit, Ordering::is_le),
            Op::Gt(lit) => compare(lit, Ordering::is_gt),
            Op::Gte(lit) => compare(lit, Ordering::is_ge),
            Op::In(lits) => lits.iter().any(|lit| compare(lit, Ordering::is_eq)),
            Op::IsNull => false,
            Op::NotNull => true,
            Op::IsTrue => matches!(v, Val::Bool(true)),
            Op::IsFalse => matches!(v, Val::Bool(false)),
            Op::Like(pattern) => matches!(v, Val::Text(s) if like(s, pattern, false)),
            Op::ILike(pattern) => matches!(v, Val::Text(s) if like(s, pattern, true)),
        }
    }

    /// The same predicate in SQL for `column` (an already-quoted SQL expression such as `r."status"`)
    /// of type `ty`: literals become parameters appended to `binds` as their JSON text and read
    /// back as `($n::jsonb #>> '{}')::<ty>`; text compares and like/ilike use `COLLATE "C"`.
    /// The parameter numbers continue from `binds.len()` (so `$1` is binds[0]).
    ///
    /// Text equality (`eq`, `in`) is also written in the column's own collation, ANDed with the
    /// exact one: an index on the column (in its collation) cannot serve a clause in `C`, and a
    /// filter on a rare value then walked an order's whole index; under a deterministic
    /// collation the two clauses agree, and under another the `C` one keeps it exact.
    pub fn to_sql(&self, column: &str, ty: ColType, binds: &mut Vec<String>) -> String {
        let mut lit = |lit: &Lit| {
            binds.push(lit.json.clone());
            let collate = if ty.is_text() { r#" collate "C""# } else { "" };
            format!("(${}::jsonb #>> '{{}}')::{}{collate}", binds.len(), ty.sql())
        };
        let uncollated = |exact: &str| exact.trim_end_matches(r#" collate "C""#).to_owned();
        match self {
            Op::Eq(l) if ty.is_text() => {
                let exact = lit(l);
                format!("({column} = {} and {column} = {exact})", uncollated(&exact))
            }
            Op::In(lits) if ty.is_text() && !lits.is_empty() => {
                let exact: Vec<String> = lits.iter().map(&mut lit).collect();
                let plain: Vec<String> = exact.iter().map(|e| uncollated(e)).collect();
                format!(
                    "({column} in ({}) and {column} in ({}))",
                    plain.join(", "),
                    exact.join(", ")
                )
            }
            Op::Eq(l) => format!("{column} = {}", lit(l)),
            Op::Neq(l) => format!("{column} <> {}", lit(l)),
            Op::Lt(l) => format!("{column} < {}", lit(l)),
            Op::Lte(l) => format!("{column} <= {}", lit(l)),
            Op::Gt(l) => format!("{column} > {}", lit(l)),
            Op::Gte(l) => format!("{column} >= {}", lit(l)),
            // `in ()` is no SQL, and matches nothing.
            Op::In(lits) if lits.is_empty() => "false".to_owned(),
            Op::In(lits) => {
                let list: Vec<String> = lits.iter().map(&mut lit).collect();
                format!("{column} in ({})", list.join(", "))
            }
            Op::IsNull => format!("{column} is null"),
            Op::NotNull => format!("{column} is not null"),
            // Where `test` is false on every value, so is the SQL (which would not even parse
            // `is true` on a number, or `like` on a date).
            Op::IsTrue if ty == ColType::Boolean => format!("{column} is true"),
            Op::IsFalse if ty == ColType::Boolean => format!("{column} is false"),
            Op::IsTrue | Op::IsFalse => "false".to_owned(),
            Op::Like(pattern) | Op::ILike(pattern) if ty.is_text() => {
                let keyword = if matches!(self, Op::Like(_)) { "like" } else { "ilike" };
                binds.push(serde_json::Value::String(like_pattern(pattern)).to_string());
                format!(r#"{column} {keyword} (${}::jsonb #>> '{{}}') collate "C""#, binds.len())
            }
            Op::Like(_) | Op::ILike(_) => "false".to_owned(),
        }
    }
}

/// PROTOCOL's pattern (`*` the wildcard) as a LIKE pattern: `*` → `%`, and `%`, `_` and the
/// escape `\` escaped to stand for themselves.
fn like_pattern(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    for c in pattern.chars() {
        match c {
            '*' => out.push('%'),
            '%' | '_' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// `text` against a pattern whose only wildcard is `*`, matching any run of characters; `fold`
/// compares ASCII letters case-insensitively (ILIKE under `C` folds ASCII only), without lowered
/// copies of either (it runs for every change and window). The pieces between stars are literal,
/// so the leftmost match of each is never worse than a later one; byte matching is character
/// matching, since UTF-8 never matches mid-character.
fn like(text: &str, pattern: &str, fold: bool) -> bool {
    let eq = |a: &[u8], b: &[u8]| if fold { a.eq_ignore_ascii_case(b) } else { a == b };
    let mut pieces = pattern.as_bytes().split(|&b| b == b'*');
    let text = text.as_bytes();
    let first = pieces.next().unwrap_or_default();
    let Some(mut last) = pieces.next() else {
        return eq(text, first);
    };
    if text.len() < first.len() || !eq(&text[..first.len()], first) {
        return false;
    }
    let mut s = &text[first.len()..];
    for piece in pieces {
        // `last` was a middle piece (empty between two stars).
        let found = match last.is_empty() {
            true => Some(0),
            false => s.windows(last.len()).position(|w| eq(w, last)),
        };
        match found {
            Some(i) => s = &s[i + last.len()..],
            None => return false,
        }
        last = piece;
    }
    s.len() >= last.len() && eq(&s[s.len() - last.len()..], last)
}

/// A JSON integer (`-?(0|[1-9][0-9]*)`).
fn integer(raw: &str) -> Option<i64> {
    let digits = raw.strip_prefix('-').unwrap_or(raw);
    let well_formed =
        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && (digits == "0" || !digits.starts_with('0'));
    if well_formed {
        raw.parse().ok()
    } else {
        None
    }
}

/// A JSON number by value (`to_jsonb` writes numeric's digits as they are, with no exponent;
/// the exponent is read anyway since JSON allows it).
fn decimal(raw: &str) -> Option<Decimal> {
    let (negative, s) = match raw.strip_prefix('-') {
        Some(s) => (true, s),
        None => (false, raw),
    };
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => {
            let e = &s[i + 1..];
            let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
            if digits.is_empty() || digits.len() > 9 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (&s[..i], e.parse::<i64>().ok()?)
        }
        None => (s, 0),
    };
    let (int, frac) = match mantissa.split_once('.') {
        Some((int, frac)) if !frac.is_empty() => (int, frac),
        Some(_) => return None,
        None => (mantissa, ""),
    };
    let int_ok = int == "0" || (!int.is_empty() && !int.starts_with('0'));
    if !int_ok || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let all = int.bytes().chain(frac.bytes());
    let mut point = int.len() as i64 + exponent;
    let mut digits: Vec<u8> = Vec::with_capacity(int.len() + frac.len());
    for d in all {
        if digits.is_empty() && d == b'0' {
            point -= 1;
        } else {
            digits.push(d - b'0');
        }
    }
    while digits.last() == Some(&0) {
        digits.pop();
    }
    if digits.is_empty() {
        return Some(Decimal {
            negative: false,
            digits: Box::new([]),
            exp: 0,
        });
    }
    Some(Decimal {
        negative,
        digits: digits.into_boxed_slice(),
        exp: point,
    })
}

/// `"… BC"` as the year's era: `to_jsonb` writes years before 1 AD as `0044-03-15 BC`.
fn strip_bc(s: &str) -> (&str, bool) {
    match s.strip_suffix(" BC") {
        Some(body) => (body, true),
        None => (s, false),
    }
}

/// `YYYY-MM-DD` (four or more year digits) at the start of `s`: days from 2000-01-01, and the rest.
fn date(s: &str, bc: bool) -> Option<(i64, &str)> {
    let year_len = s.find('-')?;
    if year_len < 4 {
        return None;
    }
    let year = digits(&s[..year_len])?;
    let rest = &s[year_len..];
    let (month, day) = (digits(rest.get(1..3)?)?, digits(rest.get(4..6)?)?);
    if rest.get(0..1) != Some("-") || rest.get(3..4) != Some("-") || year == 0 {
        return None;
    }
    // Astronomical numbering: 1 BC is year 0.
    let year = if bc { 1 - year } else { year };
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    Some((
        days_from_civil(year, month, day) - days_from_civil(2000, 1, 1),
        &rest[6..],
    ))
}

/// `YYYY-MM-DDTHH:MM:SS[.ffffff][±HH:MM[:SS]][ BC]` as microseconds from 2000-01-01 00:00 (UTC
/// when `zoned`, where the offset is required).
fn timestamp(s: &str, zoned: bool) -> Option<i64> {
    let (body, bc) = strip_bc(s);
    let (days, rest) = date(body, bc)?;
    let rest = rest.strip_prefix('T')?;
    let (hour, minute, second) = (
        digits(rest.get(0..2)?)?,
        digits(rest.get(3..5)?)?,
        digits(rest.get(6..8)?)?,
    );
    if rest.get(2..3) != Some(":") || rest.get(5..6) != Some(":") || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut rest = &rest[8..];
    let mut micros = 0;
    if let Some(after) = rest.strip_prefix('.') {
        let len = after.bytes().take_while(u8::is_ascii_digit).count();
        if !(1..=6).contains(&len) {
            return None;
        }
        micros = digits(&after[..len])? * 10i64.pow(6 - len as u32);
        rest = &after[len..];
    }
    let mut offset = 0;
    if zoned {
        let sign = match rest.get(0..1)? {
            "+" => 1,
            "-" => -1,
            _ => return None,
        };
        let (h, m) = (digits(rest.get(1..3)?)?, digits(rest.get(4..6)?)?);
        if rest.get(3..4) != Some(":") {
            return None;
        }
        let mut secs = h * 3600 + m * 60;
        rest = &rest[6..];
        if let Some(after) = rest.strip_prefix(':') {
            secs += digits(after.get(0..2)?)?;
            rest = &after[2..];
        }
        offset = sign * secs;
    }
    if !rest.is_empty() {
        return None;
    }
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    seconds.checked_mul(1_000_000)?.checked_add(micros)
}

fn digits(s: &str) -> Option<i64> {
    if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 in the proleptic Gregorian calendar (as PostgreSQL counts, also before
/// 1582), by Howard Hinnant's `days_from_civil`.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The canonical form `to_jsonb` writes (lowercase, hyphenated), as a big-endian integer.
fn uuid(s: &str) -> Option<u128> {
    let canonical = s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_digit() || ('a'..='f').contains(&c),
        });
    if !canonical {
        return None;
    }
    u128::from_str_radix(&s.replace('-', ""), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(raw: &str) -> Val {
        Val::from_json(ColType::Numeric, raw).unwrap()
    }

    #[test]
    fn numerics_compare_by_value_with_nan_above_infinity() {
        let ascending = [
            r#""-Infinity""#,
            "-100000000000000000000000000000.5",
            "-12.5",
            "-0.00000000000000000001",
            "0",
            "0.000000000000000000000000000001",
            "0.5",
            "1.49999999999999999999",
            "1.5",
            "12",
            "100000000000000000000000000000",
            r#""Infinity""#,
            r#""NaN""#,
        ];
        for pair in ascending.windows(2) {
            assert_eq!(cmp(&num(pair[0]), &num(pair[1])), Ordering::Less, "{pair:?}");
            assert_eq!(cmp(&num(pair[1]), &num(pair[0])), Ordering::Greater, "{pair:?}");
        }
        for (a, b) in [
            ("1.50", "1.5"),
            ("0.00", "0"),
            ("-0", "0"),
            ("100", "1e2"),
            ("0.0100", "1E-2"),
        ] {
            assert_eq!(cmp(&num(a), &num(b)), Ordering::Equal, "{a} {b}");
        }
        assert_eq!(cmp(&num(r#""NaN""#), &num(r#""NaN""#)), Ordering::Equal);
        for bad in ["01", "1.", ".5", "+1", "1e", "NaN", r#""nan""#, "\"1\""] {
            assert!(Val::from_json(ColType::Numeric, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn floats_put_nan_last_and_zero_signless() {
        let f = |raw| Val::from_json(ColType::Double, raw).unwrap();
        assert_eq!(cmp(&f(r#""NaN""#), &f(r#""Infinity""#)), Ordering::Greater);
        assert_eq!(cmp(&f(r#""NaN""#), &f(r#""NaN""#)), Ordering::Equal);
        assert_eq!(cmp(&f("-0"), &f("0")), Ordering::Equal);
        assert_eq!(cmp(&f(r#""-Infinity""#), &f("-1e308")), Ordering::Less);
        // 1.1 as a float4 is not 1.1 as a float8.
        let real = Val::from_json(ColType::Real, "1.1").unwrap();
        assert!(matches!(real, Val::Float(x) if x == f64::from(1.1f32)));
        assert!(Val::from_json(ColType::Double, "1e999").is_err());
    }

    #[test]
    fn timestamps_read_as_instants_in_every_era() {
        let tz = |raw: &str| match Val::from_json(ColType::Timestamptz, &format!("{raw:?}")).unwrap() {
            Val::Time(t) => t,
            v => panic!("{v:?}"),
        };
        assert_eq!(tz("2000-01-01T00:00:00+00:00"), 0);
        assert_eq!(tz("2000-01-01T00:00:00.000001+00:00"), 1);
        assert_eq!(tz("2000-01-01T00:00:00.12+00:00"), 120_000);
        assert_eq!(tz("2000-01-01T02:00:00+02:00"), 0);
        assert_eq!(tz("1999-12-31T23:59:59-00:00:01"), 0);
        assert_eq!(
            tz("2000-03-01T00:00:00+00:00") - tz("2000-02-28T00:00:00+00:00"),
            2 * 86_400_000_000
        );
        assert_eq!(tz("infinity"), i64::MAX);
        assert!(tz("0001-01-01T00:00:00+00:00 BC") < tz("0001-01-01T00:00:00+00:00"));
        assert!(tz("0044-03-15T00:00:00+00:00 BC") < tz("0001-01-01T00:00:00+00:00 BC"));
        assert_eq!(
            tz("0001-12-31T00:00:00+00:00 BC") + 86_400_000_000,
            tz("0001-01-01T00:00:00+00:00")
        );
        assert!(tz("12345-01-01T00:00:00+00:00") > tz("9999-12-31T23:59:59.999999+00:00"));
        let date = |raw: &str| Val::from_json(ColType::Date, &format!("{raw:?}")).map(|v| format!("{v:?}"));
        assert_eq!(date("2000-01-02").unwrap(), "Date(1)");
        assert_eq!(date("1999-12-31").unwrap(), "Date(-1)");
        assert_eq!(date("-infinity").unwrap(), format!("Date({})", i32::MIN));
        for bad in ["2026-02-29", "2026-13-01", "26-01-01", "2026-1-01", "0000-01-01"] {
            assert!(date(bad).is_err(), "{bad}");
        }
        let plain = |raw: &str| Val::from_json(ColType::Timestamp, &format!("{raw:?}"));
        assert!(plain("2026-01-01T10:00:00").is_ok());
        assert!(plain("2026-01-01T10:00:00+00:00").is_err());
        assert!(plain("2026-01-01T10:00:00.1234567").is_err());
        assert!(plain("2026-01-01T24:00:00").is_err());
    }

    #[test]
    fn like_patterns_have_one_wildcard() {
        let cases = [
            ("abc", "abc", true),
            ("abc", "ab", false),
            ("abc", "*", true),
            ("", "*", true),
            ("", "", true),
            ("abc", "a*", true),
            ("abc", "*c", true),
            ("abc", "*b*", true),
            ("abc", "a*b*c", true),
            ("aXbXc", "*X*X*", true),
            ("aXc", "*X*X*", false),
            ("aa", "a*a", true),
            ("a", "a*a", false),
            ("100%", "100%", true),
            ("1000", "100%", false),
            ("a_c", "a_c", true),
            ("abc", "a_c", false),
            (r"a\c", r"a\c", true),
            ("ac", r"a\c", false),
            ("𝄞é", "*é", true),
        ];
        for (text, pattern, expected) in cases {
            assert_eq!(like(text, pattern, false), expected, "{text:?} like {pattern:?}");
        }
        for (text, pattern, expected) in [("ABC", "a*c", true), ("xAbCx", "*b**C*", true), ("ab", "*B*B*", false)] {
            assert_eq!(like(text, pattern, true), expected, "{text:?} ilike {pattern:?}");
        }
        assert_eq!(like_pattern(r"50%_\*"), r"50\%\_\\%");
        let text = Val::Text("Ünïcode SLEEP".into());
        assert!(Op::ILike("*sleep*".into()).test(&text));
        assert!(!Op::ILike("ü*".into()).test(&text), "ILIKE under C folds ASCII only");
        assert!(!Op::Like("*sleep*".into()).test(&text));
    }

    #[test]
    fn null_passes_only_is_null() {
        let lit = Lit {
            val: Val::Int(1),
            json: "1".into(),
        };
        for op in [Op::Neq(lit.clone()), Op::NotNull, Op::IsFalse, Op::Like("*".into())] {
            assert!(!op.test(&Val::Null), "{op:?}");
        }
        assert!(Op::IsNull.test(&Val::Null));
    }

    #[test]
    fn sql_numbers_parameters_after_the_existing_ones() {
        let lit = |json: &str| Lit {
            val: Val::Text(json.into()),
            json: json.into(),
        };
        let mut binds = vec!["x".to_owned()];
        let sql = Op::In(vec![lit("\"a\""), lit("\"b\"")]).to_sql(r#"r."s""#, ColType::Text, &mut binds);
        assert_eq!(
            sql,
            r#"(r."s" in (($2::jsonb #>> '{}')::text, ($3::jsonb #>> '{}')::text) and r."s" in (($2::jsonb #>> '{}')::text collate "C", ($3::jsonb #>> '{}')::text collate "C"))"#
        );
        let sql = Op::ILike("a%*".into()).to_sql(r#"r."s""#, ColType::Varchar, &mut binds);
        assert_eq!(sql, r#"r."s" ilike ($4::jsonb #>> '{}') collate "C""#);
        assert_eq!(binds[3], r#""a\\%%""#);
    }
}
