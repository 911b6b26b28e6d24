//! Views' values against PostgreSQL itself (PROTOCOL §9: a view's rows are exactly what a
//! `where … order by …` returns): random values of every column type, edge cases included, are
//! stored, read back as `to_jsonb` renders them, and then sorted by `value::cmp` and filtered by
//! `Op::test` beside PostgreSQL's `order by` and `where` over the same rows.
//!
//! The RNG is seeded from the clock; every failure names the seed, and `VIEWS_SEED=<seed>`
//! replays it.

use std::cmp::Ordering;
use std::collections::HashMap;

use pgfeed::db::literals::{self, LiteralError};
use pgfeed::feed::views::value::{cmp, ColType, Lit, Op, Val};
use serde_json::value::RawValue;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::support::TestDb;

/// Rows per column type, and filters tried on them.
const ROWS: usize = 300;
const FILTERS: usize = 200;

#[tokio::test]
async fn values_sort_and_filter_exactly_as_postgresql_does() {
    // Arrange
    let seed = std::env::var("VIEWS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let db = TestDb::create_empty().await;
    let pool = utc_pool(&db).await;
    let mut failures = Vec::new();

    // Act and assert, type by type: everything that differs is collected, then reported at once.
    for (n, ty) in ColType::ALL.into_iter().enumerate() {
        let mut rng = Rng::new(seed ^ (n as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let table = format!("t_{n}");
        let rows = store(&pool, &table, ty, &mut rng).await;
        failures.extend(check_order(&pool, &table, ty, &rows).await);
        failures.extend(check_filters(&pool, &table, ty, &rows, &mut rng).await);
        failures.extend(check_refusals(&pool, ty, &mut rng).await);
    }

    let shown: Vec<&String> = failures.iter().take(40).collect();
    assert!(
        failures.is_empty(),
        "{} disagreements with PostgreSQL (replay with VIEWS_SEED={seed}):\n{}",
        failures.len(),
        shown.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
    );
}

/// A pool whose sessions run in UTC, as the capture trigger's do.
async fn utc_pool(db: &TestDb) -> PgPool {
    let options: PgConnectOptions = db.url.parse().expect("test database URL");
    PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options.options([("timezone", "UTC")]))
        .await
        .expect("test pool")
}

/// One stored row: its id, its column's JSON as `to_jsonb` wrote it, and that read as a value.
struct Row {
    id: i32,
    json: String,
    val: Val,
}

/// Creates `table` with one column of type `ty`, fills it with random values (NULL included),
/// and reads them back as the capture trigger would see them.
async fn store(pool: &PgPool, table: &str, ty: ColType, rng: &mut Rng) -> Vec<Row> {
    sqlx::query(&format!("create table {table} (id int primary key, c {})", ty.sql()))
        .execute(pool)
        .await
        .expect("create table");
    let texts: Vec<Option<String>> = (0..ROWS).map(|_| (!rng.chance(8)).then(|| value(rng, ty))).collect();
    sqlx::query(&format!(
        "insert into {table} select i, v::{} from unnest($1::text[]) with ordinality as u (v, i)",
        ty.sql()
    ))
    .bind(&texts)
    .execute(pool)
    .await
    .unwrap_or_else(|e| panic!("inserting {ty:?} values {texts:?}: {e}"));
    let stored: Vec<(i32, String)> =
        sqlx::query_as(&format!("select id, to_jsonb(t)::text from {table} t order by id"))
            .fetch_all(pool)
            .await
            .expect("reading rows back");
    stored
        .into_iter()
        .map(|(id, row)| {
            let columns: HashMap<String, Box<RawValue>> = serde_json::from_str(&row).expect("row JSON");
            let json = columns["c"].get().to_owned();
            let val = Val::from_json(ty, &json).unwrap_or_else(|e| panic!("{ty:?} row {row}: {e}"));
            Row { id, json, val }
        })
        .collect()
}

/// Sorting by `cmp` (NULL last) must give PostgreSQL's order, ties included: adjacent rows in
/// our order compare as their `dense_rank` under PostgreSQL's `order by` does.
async fn check_order(pool: &PgPool, table: &str, ty: ColType, rows: &[Row]) -> Vec<String> {
    let collate = if matches!(ty, ColType::Text | ColType::Varchar) {
        r#" collate "C""#
    } else {
        ""
    };
    let ranks: HashMap<i32, i64> = sqlx::query_as::<_, (i32, i64)>(&format!(
        "select id, dense_rank() over (order by c{collate} nulls last) from {table}"
    ))
    .fetch_all(pool)
    .await
    .expect("ranking")
    .into_iter()
    .collect();
    let mut sorted: Vec<&Row> = rows.iter().collect();
    sorted.sort_by(|a, b| nulls_last(&a.val, &b.val));
    sorted
        .windows(2)
        .filter_map(|pair| {
            let (a, b) = (pair[0], pair[1]);
            let ours = nulls_last(&a.val, &b.val);
            let theirs = ranks[&a.id].cmp(&ranks[&b.id]);
            (ours != theirs).then(|| {
                format!(
                    "{ty:?} order: cmp({}, {}) = {ours:?}, PostgreSQL says {theirs:?}",
                    a.json, b.json
                )
            })
        })
        .collect()
}

fn nulls_last(a: &Val, b: &Val) -> Ordering {
    match (a.is_null(), b.is_null()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => cmp(a, b),
    }
}

/// Random filters of every op, their literals read by `db::literals`: `Op::test` must pass
/// exactly the rows `where <Op::to_sql>` selects.
async fn check_filters(pool: &PgPool, table: &str, ty: ColType, rows: &[Row], rng: &mut Rng) -> Vec<String> {
    let stored: Vec<&str> = rows
        .iter()
        .filter(|r| !r.val.is_null())
        .map(|r| r.json.as_str())
        .collect();
    // Each filter's literal texts first, so all of them are read in one batch.
    let shapes: Vec<(usize, Vec<String>)> = (0..FILTERS)
        .map(|_| {
            let kind = rng.below(13);
            let count = match kind {
                0..=5 => 1,
                6 => rng.below(5),
                _ => 0,
            };
            let texts = (0..count).map(|_| literal(rng, ty, &stored)).collect();
            (kind, texts)
        })
        .collect();
    let items: Vec<(ColType, &str)> = shapes
        .iter()
        .flat_map(|(_, texts)| texts.iter().map(|t| (ty, t.as_str())))
        .collect();
    let jsons = match literals::read(pool, &items).await {
        Ok(jsons) => jsons,
        Err(e) => return vec![format!("{ty:?} literals {items:?}: {e}")],
    };
    let mut jsons = jsons.into_iter();
    let mut failures = Vec::new();
    for (kind, texts) in shapes {
        let mut lits = Vec::new();
        for text in &texts {
            let json = jsons.next().expect("one JSON per literal");
            match Val::from_json(ty, &json) {
                Ok(val) => lits.push(Lit { val, json }),
                Err(e) => failures.push(format!("{ty:?} literal {text:?} read as {json}: {e}")),
            }
        }
        if lits.len() < texts.len() {
            continue;
        }
        let op = make_op(kind, lits, rng, ty, rows);
        let mut binds = Vec::new();
        let sql = format!(
            "select id from {table} t where {} order by id",
            op.to_sql(r#"t."c""#, ty, &mut binds)
        );
        let mut query = sqlx::query_scalar::<_, i32>(&sql);
        for bind in &binds {
            query = query.bind(bind);
        }
        let theirs = match query.fetch_all(pool).await {
            Ok(ids) => ids,
            Err(e) => {
                failures.push(format!("{ty:?} {op:?}: {sql} with {binds:?}: {e}"));
                continue;
            }
        };
        let ours: Vec<i32> = rows.iter().filter(|r| op.test(&r.val)).map(|r| r.id).collect();
        if ours != theirs {
            let differ: Vec<&str> = rows
                .iter()
                .filter(|r| ours.contains(&r.id) != theirs.contains(&r.id))
                .map(|r| r.json.as_str())
                .take(5)
                .collect();
            failures.push(format!(
                "{ty:?} {op:?}: test passes {} rows, PostgreSQL {}; they differ on {differ:?}",
                ours.len(),
                theirs.len()
            ));
        }
    }
    failures
}

fn make_op(kind: usize, mut lits: Vec<Lit>, rng: &mut Rng, ty: ColType, rows: &[Row]) -> Op {
    let mut lit = || lits.pop().expect("a literal");
    match kind {
        0 => Op::Eq(lit()),
        1 => Op::Neq(lit()),
        2 => Op::Lt(lit()),
        3 => Op::Lte(lit()),
        4 => Op::Gt(lit()),
        5 => Op::Gte(lit()),
        6 => Op::In(lits),
        7 => Op::IsNull,
        8 => Op::NotNull,
        9 => Op::IsTrue,
        10 => Op::IsFalse,
        11 => Op::Like(pattern(rng, ty, rows)),
        _ => Op::ILike(pattern(rng, ty, rows)),
    }
}

/// PostgreSQL must refuse each malformed literal, and `db::literals::read` must name the first.
async fn check_refusals(pool: &PgPool, ty: ColType, rng: &mut Rng) -> Vec<String> {
    let bad: &[&str] = match ty {
        ColType::SmallInt => &["32768", "abc", "1.5", ""],
        ColType::Integer => &["2147483648", "12a", "1e3"],
        ColType::BigInt => &["9223372036854775808", "abc", "- 1"],
        ColType::Real => &["1e39", "abc", "1.5.5"],
        ColType::Double => &["1e400", "x", "--1"],
        ColType::Numeric => &["1.2.3", "abc", "1e"],
        ColType::Text | ColType::Varchar => &["a\0b"],
        ColType::Boolean => &["maybe", "2"],
        ColType::Timestamptz | ColType::Timestamp => {
            &["2026-13-01", "2026-02-30 10:00", "not a time", "2026-01-01 25:00"]
        }
        ColType::Date => &["2026-13-01", "2026-02-29", "x"],
        ColType::Uuid => &[
            "abc",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
            "g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        ],
    };
    let mut failures = Vec::new();
    for refused in bad {
        let goods: Vec<String> = (0..rng.below(4)).map(|_| value(rng, ty)).collect();
        let later_bad = bad[rng.below(bad.len())];
        let mut items: Vec<(ColType, &str)> = goods.iter().map(|g| (ty, g.as_str())).collect();
        let index = items.len();
        items.push((ty, refused));
        items.push((ty, later_bad));
        match literals::read(pool, &items).await {
            Err(LiteralError::Bad { index: i, message }) if i == index && !message.is_empty() => {}
            other => failures.push(format!(
                "{ty:?} literals {items:?}: expected Bad at {index}, got {other:?}"
            )),
        }
    }
    failures
}

/// A literal's text: often a stored value (so that equality and ties happen), spelled in one of
/// the ways PostgreSQL reads it.
fn literal(rng: &mut Rng, ty: ColType, stored: &[&str]) -> String {
    if !stored.is_empty() && rng.chance(50) {
        let json = stored[rng.below(stored.len())];
        // Numbers as they are: a float's digits would not survive a round trip through f64.
        let text = match json.starts_with('"') {
            true => serde_json::from_str::<String>(json).expect("stored JSON"),
            false => json.to_owned(),
        };
        return respell(rng, ty, text);
    }
    let text = value(rng, ty);
    respell(rng, ty, text)
}

/// Other spellings of the same value that PostgreSQL's input functions accept.
fn respell(rng: &mut Rng, ty: ColType, text: String) -> String {
    match ty {
        ColType::Text | ColType::Varchar => text,
        _ if rng.chance(70) => text,
        ColType::SmallInt | ColType::Integer | ColType::BigInt => match rng.below(3) {
            0 if !text.starts_with('-') => format!("+{text}"),
            1 if !text.starts_with('-') => format!("00{text}"),
            _ => format!(" {text} "),
        },
        ColType::Real | ColType::Double | ColType::Numeric => match text.as_str() {
            "NaN" => pick(rng, &["nan", " NaN ", "NAN"]).to_string(),
            "Infinity" => pick(rng, &["inf", "+Infinity", " INFINITY"]).to_string(),
            "-Infinity" => pick(rng, &["-inf", "-INFINITY "]).to_string(),
            _ => match rng.below(3) {
                0 if !text.contains(['e', 'E']) => format!("{text}e0"),
                1 if text.contains('.') && !text.contains(['e', 'E']) => format!("{text}00"),
                _ => format!(" {text} "),
            },
        },
        ColType::Boolean => {
            let spellings: &[&str] = if text == "true" {
                &["TRUE", " t ", "yes", "on", "1", "Y"]
            } else {
                &["FALSE", " f ", "no", "off", "0", "N"]
            };
            pick(rng, spellings).to_string()
        }
        ColType::Uuid => match rng.below(3) {
            0 => text.to_uppercase(),
            1 => format!("{{{text}}}"),
            _ => text.replace('-', ""),
        },
        ColType::Timestamptz | ColType::Timestamp | ColType::Date => match rng.below(2) {
            0 => format!(" {text} "),
            _ => text.to_uppercase(),
        },
    }
}

/// A random value of `ty` as SQL text: edge cases, a few values drawn from small pools so that
/// equal and nearly equal values meet, and values from the whole range.
fn value(rng: &mut Rng, ty: ColType) -> String {
    match ty {
        ColType::SmallInt => int(rng, i16::MIN.into(), i16::MAX.into()),
        ColType::Integer => int(rng, i32::MIN.into(), i32::MAX.into()),
        ColType::BigInt => int(rng, i64::MIN, i64::MAX),
        ColType::Real => {
            let edges = [
                "NaN",
                "Infinity",
                "-Infinity",
                "-0",
                "0",
                "1.1",
                "3.4028235e38",
                "1.4e-45",
                "-1.5",
                "1.50",
            ];
            match rng.below(3) {
                0 => pick(rng, &edges).to_string(),
                1 => small_decimal(rng),
                _ => loop {
                    let x = f32::from_bits(rng.next() as u32);
                    if x.is_finite() {
                        break format!("{x:e}");
                    }
                },
            }
        }
        ColType::Double => {
            let edges = [
                "NaN",
                "Infinity",
                "-Infinity",
                "-0",
                "0",
                "0.1",
                "1.7976931348623157e308",
                "5e-324",
                "-2.2250738585072014e-308",
                "1.5",
            ];
            match rng.below(3) {
                0 => pick(rng, &edges).to_string(),
                1 => small_decimal(rng),
                _ => loop {
                    let x = f64::from_bits(rng.next());
                    if x.is_finite() {
                        break format!("{x:e}");
                    }
                },
            }
        }
        ColType::Numeric => {
            let edges = [
                "NaN",
                "Infinity",
                "-Infinity",
                "-0.00",
                "0",
                "1.5",
                "1.50",
                "1.500000000000000000000000000000",
                "0.000000000000000000000000000001",
                "-0.000000000000000000000000000001",
                "123456789012345678901234567890123456789012345",
            ];
            match rng.below(3) {
                0 => pick(rng, &edges).to_string(),
                1 => small_decimal(rng),
                _ => {
                    let int: String = (0..rng.below(25)).map(|_| digit(rng)).collect();
                    let frac: String = (0..rng.below(25)).map(|_| digit(rng)).collect();
                    let sign = if rng.chance(50) { "-" } else { "" };
                    format!(
                        "{sign}{}.{}",
                        if int.is_empty() { "0" } else { &int },
                        if frac.is_empty() { "0" } else { &frac }
                    )
                }
            }
        }
        ColType::Text | ColType::Varchar => {
            let len = rng.below(7);
            (0..len).map(|_| *pick(rng, &LETTERS)).collect()
        }
        ColType::Boolean => pick(rng, &["true", "false"]).to_string(),
        ColType::Timestamptz | ColType::Timestamp | ColType::Date => {
            if rng.chance(5) {
                return pick(rng, &["infinity", "-infinity"]).to_string();
            }
            let near = rng.chance(40);
            let (year, bc) = match rng.below(100) {
                _ if near => (2025 + rng.below(2) as i64, false),
                0..=69 => (1900 + rng.below(200) as i64, false),
                70..=79 => (1 + rng.below(1899) as i64, false),
                80..=89 => (1 + rng.below(4712) as i64, true),
                _ => (10_000 + rng.below(190_000) as i64, false),
            };
            let month = if near { 1 } else { 1 + rng.below(12) as i64 };
            let astronomical = if bc { 1 - year } else { year };
            let day = if near {
                1 + rng.below(2) as i64
            } else {
                1 + rng.below(days_in_month(astronomical, month) as usize) as i64
            };
            let era = if bc { " BC" } else { "" };
            let date = format!("{year:04}-{month:02}-{day:02}");
            if ty == ColType::Date {
                return format!("{date}{era}");
            }
            let hour = if near { rng.below(3) } else { rng.below(24) };
            let (minute, second) = if near && rng.chance(50) {
                (0, 0)
            } else {
                (rng.below(60), rng.below(60))
            };
            let digits = rng.below(7);
            let fraction: String = if digits == 0 {
                String::new()
            } else {
                let f: String = (0..digits).map(|_| if near { '0' } else { digit(rng) }).collect();
                format!(".{f}")
            };
            let offset = if ty == ColType::Timestamptz {
                *pick(rng, &["", "+00", "Z", "+02", "-05:30", "+14", "-12", "+00:00"])
            } else {
                ""
            };
            let sep = pick(rng, &[" ", "T"]);
            format!("{date}{sep}{hour:02}:{minute:02}:{second:02}{fraction}{offset}{era}")
        }
        ColType::Uuid => {
            let u: u128 = match rng.below(4) {
                0 => *pick(rng, &[0, u128::MAX, 1, 1 << 127]),
                // Close to each other: they differ in one byte, first or last.
                1 => (rng.below(3) as u128) << 120 | rng.below(3) as u128,
                _ => (rng.next() as u128) << 64 | rng.next() as u128,
            };
            let hex = format!("{u:032x}");
            format!(
                "{}-{}-{}-{}-{}",
                &hex[..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..]
            )
        }
    }
}

/// Characters for text: ASCII letters of both cases (ilike folds them), letters whose case only
/// a Unicode-aware fold would change (it must not), a combining accent beside its precomposed
/// twin, characters beyond the BMP, LIKE's own metacharacters (literal in a pattern), and the
/// pattern wildcard `*`.
const LETTERS: [&str; 26] = [
    "a", "b", "A", "B", "z", "Z", "é", "É", "e\u{301}", "ß", "ẞ", "ı", "I", "i", "𝄞", "😀", "中", " ", "%", "_", "\\",
    "*", "'", "\u{7f}", "ÿ", "\u{fffd}",
];

/// A PROTOCOL pattern: pieces of a stored value with stars between them, some letters in the
/// other case or replaced by LIKE's metacharacters, or random letters.
fn pattern(rng: &mut Rng, ty: ColType, rows: &[Row]) -> String {
    let texts: Vec<&str> = rows
        .iter()
        .filter_map(|r| match &r.val {
            Val::Text(s) => Some(s.as_str()),
            _ => None,
        })
        .collect();
    if texts.is_empty() || !matches!(ty, ColType::Text | ColType::Varchar) || rng.chance(20) {
        let len = rng.below(5);
        return (0..len)
            .map(|_| if rng.chance(30) { "*" } else { *pick(rng, &LETTERS) })
            .collect();
    }
    let source = texts[rng.below(texts.len())];
    let mut out = String::new();
    if rng.chance(30) {
        out.push('*');
    }
    for c in source.chars() {
        match rng.below(12) {
            0 => out.push('*'),
            1 => {}
            2 => out.extend(c.to_uppercase()),
            3 => out.extend(c.to_lowercase()),
            // LIKE's metacharacters in place of a letter: literal here, so no longer a match.
            4 => out.push(*pick(rng, &['_', '%', '\\'])),
            _ => out.push(c),
        }
    }
    if rng.chance(30) {
        out.push('*');
    }
    out
}

fn int(rng: &mut Rng, min: i64, max: i64) -> String {
    match rng.below(4) {
        0 => pick(rng, &[min, max, min + 1, max - 1, 0, -1, 1]).to_string(),
        1 => (rng.below(41) as i64 - 20).to_string(),
        _ => {
            let span = (max as i128 - min as i128 + 1) as u128;
            let n = ((rng.next() as u128) << 64 | rng.next() as u128) % span;
            (min as i128 + n as i128).to_string()
        }
    }
}

/// A short decimal such as `-3.10`, so that values equal but for trailing zeros meet.
fn small_decimal(rng: &mut Rng) -> String {
    let sign = if rng.chance(30) { "-" } else { "" };
    let int = rng.below(4);
    let frac: String = (0..rng.below(4)).map(|_| pick(rng, &['0', '5', '1'])).collect();
    if frac.is_empty() {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    }
}

fn digit(rng: &mut Rng) -> char {
    char::from(b'0' + rng.below(10) as u8)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn pick<'a, T>(rng: &mut Rng, xs: &'a [T]) -> &'a T {
    &xs[rng.below(xs.len())]
}

/// xorshift64*: small, seedable, and good enough to spread test values.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// True `percent` times in a hundred.
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}
