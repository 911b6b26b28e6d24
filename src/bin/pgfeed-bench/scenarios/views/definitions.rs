//! The studies the view scenarios run on, the view definitions they subscribe, and PostgreSQL's
//! own answer for each definition: the oracle every subscriber's window is compared with.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Map, Value};

use super::window::Window;
use crate::setup::BenchDb;

/// Title prefixes whose code-point order (`B` < `a` < `g` < `É`) differs from a dictionary order
/// (alpha, Beta, Éta, gamma): a view that sorted text by locale would fail the comparison.
pub const TITLE_PREFIXES: [&str; 4] = ["alpha ", "Beta ", "gamma ", "Éta "];
const STATUSES: [&str; 4] = ["draft", "active", "closed", "archived"];

/// Studies in batches of this many rows, one statement each, so the load reports progress and
/// no single transaction holds a million rows' WAL.
const LOAD_BATCH: i64 = 100_000;

/// A view definition (PROTOCOL §9) beside the same thing in SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    /// column → `op.value`, as a subscribe frame writes it.
    pub filter: Vec<(&'static str, &'static str)>,
    /// The filter as a WHERE clause.
    pub where_sql: &'static str,
    pub order: &'static str,
    /// The order as an ORDER BY list, text compared by code point.
    pub order_sql: &'static str,
    pub limit: usize,
    pub count: bool,
}

type Filter = (&'static [(&'static str, &'static str)], &'static str);

/// Filters of the 100 definitions the 1,000 subscribers share: across status values (which the
/// writers change), and on title (which they change too).
const FILTERS: [Filter; 10] = [
    (&[], "true"),
    (&[("status", "eq.draft")], "status = 'draft'"),
    (&[("status", "eq.active")], "status = 'active'"),
    (&[("status", "eq.closed")], "status = 'closed'"),
    (&[("status", "eq.archived")], "status = 'archived'"),
    (&[("status", "in.(draft,active)")], "status in ('draft', 'active')"),
    (&[("status", "neq.archived")], "status <> 'archived'"),
    (
        &[("status", "in.(closed,archived)")],
        "status in ('closed', 'archived')",
    ),
    (&[("title", "ilike.*7*")], "title ilike '%7%'"),
    (
        &[("status", "eq.active"), ("title", "ilike.beta*")],
        "status = 'active' and title ilike 'beta%'",
    ),
];

const ORDERS: [(&str, &str); 5] = [
    ("updated_at.desc", "updated_at desc"),
    ("title", r#"title collate "C""#),
    ("label", r#"label collate "C""#),
    ("id", "id"),
    // Oldest first: every write to a row in the window moves it out, and another must fill in.
    ("updated_at", "updated_at"),
];

/// Filters of the definitions that only the new subscriptions open (never open before them).
const NEW_FILTERS: [Filter; 5] = [
    (&[("label", "gte.L5")], r#"label collate "C" >= 'L5'"#),
    (&[("title", "like.Beta 00*")], "title like 'Beta 00%'"),
    (
        &[("status", "eq.closed"), ("label", "lt.L3")],
        r#"status = 'closed' and label collate "C" < 'L3'"#,
    ),
    // PostgreSQL decides what a case-insensitive match of a non-ASCII letter is; the view must agree.
    (&[("title", "ilike.éta 1*")], "title ilike 'éta 1%'"),
    (
        &[("id", "lt.500000"), ("status", "neq.draft")],
        "id < 500000 and status <> 'draft'",
    ),
];

const NEW_ORDERS: [(&str, &str); 5] = [
    ("title.desc", r#"title collate "C" desc"#),
    ("label.desc", r#"label collate "C" desc"#),
    ("updated_at.desc", "updated_at desc"),
    ("id.desc", "id desc"),
    ("status,title", r#"status collate "C", title collate "C""#),
];

/// The 100 definitions of the live phase: 10 filters × 5 orders, limit 50, with and without count.
pub fn shared() -> Vec<Definition> {
    let mut all = Vec::new();
    for (filter, where_sql) in FILTERS {
        for (order, order_sql) in ORDERS {
            for count in [false, true] {
                all.push(Definition {
                    filter: filter.to_vec(),
                    where_sql,
                    order,
                    order_sql,
                    limit: 50,
                    count,
                });
            }
        }
    }
    all
}

/// 100 definitions no subscriber has opened: 5 filters × 5 orders × limits 50 and 20 × count.
pub fn new() -> Vec<Definition> {
    let mut all = Vec::new();
    for (filter, where_sql) in NEW_FILTERS {
        for (order, order_sql) in NEW_ORDERS {
            for limit in [50, 20] {
                for count in [false, true] {
                    all.push(Definition {
                        filter: filter.to_vec(),
                        where_sql,
                        order,
                        order_sql,
                        limit,
                        count,
                    });
                }
            }
        }
    }
    all
}

impl Definition {
    pub fn subscribe_frame(&self, view: &str) -> Value {
        let filter: Map<String, Value> = self
            .filter
            .iter()
            .map(|(column, op)| ((*column).to_owned(), Value::from(*op)))
            .collect();
        json!({
            "action": "subscribe", "topic": "studies", "view": view, "filter": filter,
            "order": self.order, "limit": self.limit, "after": null, "count": self.count,
        })
    }

    /// PROTOCOL §9's guarantee, as the SELECT it names.
    fn window_sql(&self) -> String {
        format!(
            "select id, version from studies where {} order by {}, id limit {}",
            self.where_sql, self.order_sql, self.limit
        )
    }

    /// What a subscriber of this definition must hold once every commit has reached it.
    pub async fn expected(&self, db: &tokio_postgres::Client) -> anyhow::Result<Window> {
        let rows = db
            .query(&self.window_sql(), &[])
            .await
            .with_context(|| format!("reading the window of {self:?}"))?;
        let count = if self.count {
            let sql = format!("select count(*) from studies where {}", self.where_sql);
            Some(db.query_one(&sql, &[]).await?.get::<_, i64>(0))
        } else {
            None
        };
        Ok(Window {
            rows: rows.iter().map(|r| (r.get(0), i64::from(r.get::<_, i32>(1)))).collect(),
            count,
        })
    }
}

/// PostgreSQL's answer for every definition, read on two connections at once (most of the
/// time is spent sorting where no index serves the order).
pub async fn expected_all(db: &BenchDb, defs: &[Definition]) -> anyhow::Result<Vec<Window>> {
    let t0 = Instant::now();
    let a = db.connect("pgfeed-bench").await?;
    let b = db.connect("pgfeed-bench").await?;
    let (even, odd) = tokio::try_join!(
        async {
            let mut out = Vec::new();
            for d in defs.iter().step_by(2) {
                out.push(d.expected(&a).await?);
            }
            anyhow::Ok(out)
        },
        async {
            let mut out = Vec::new();
            for d in defs.iter().skip(1).step_by(2) {
                out.push(d.expected(&b).await?);
            }
            anyhow::Ok(out)
        },
    )?;
    eprintln!(
        "pgfeed-bench: PostgreSQL's answer for {} definitions read in {:.1} s",
        defs.len(),
        t0.elapsed().as_secs_f64()
    );
    let mut even = even.into_iter();
    let mut odd = odd.into_iter();
    Ok((0..defs.len())
        .filter_map(|i| if i % 2 == 0 { even.next() } else { odd.next() })
        .collect())
}

/// What [`load`] left in the table.
pub struct Loaded {
    /// The ids of the scenario's studies span `first_id..=last_id`.
    pub first_id: i64,
    pub last_id: i64,
    pub took: Duration,
    /// Whether capture was off during the load (see [`load`]).
    pub without_capture: bool,
}

/// Brings the table to `n` generated studies (labels `L…`), spread over statuses, titles and
/// `updated_at`; a run on a database that already has them inserts nothing.
///
/// The load runs with `session_replication_role = replica` where the role may set it, so the
/// capture trigger stays out of it: a million-row import is not what the scenario measures, and
/// views read their first windows from the table, not from the log.
pub async fn load(db: &BenchDb, n: i64) -> anyhow::Result<Loaded> {
    let conn = db.connect("pgfeed-bench").await?;
    let without_capture = match conn.batch_execute("set session_replication_role = replica").await {
        Ok(()) => true,
        Err(e) => {
            eprintln!("pgfeed-bench: loading with capture on ({e}); the load will take longer");
            false
        }
    };
    let t0 = Instant::now();
    let insert = r#"insert into studies (label, title, status, created_at, updated_at)
        select format('L%s', lpad(((i * 7919) % 1000003)::text, 7, '0')),
               ($3::text[])[1 + (i * 7) % 4] || lpad((((i * 104723) % 1000003) / 2)::text, 6, '0'),
               ($4::text[])[1 + (i + i / 7) % 4],
               t, t
        from generate_series($1::bigint, $2::bigint) i,
             lateral (select timestamptz '2026-01-01' + ((i * 104729) % 1000003) * interval '1 second' as t) s
        on conflict (label) do nothing"#;
    let prefixes: Vec<&str> = TITLE_PREFIXES.to_vec();
    let statuses: Vec<&str> = STATUSES.to_vec();
    let mut from = 1;
    while from <= n {
        let to = (from + LOAD_BATCH - 1).min(n);
        conn.execute(insert, &[&from, &to, &prefixes, &statuses])
            .await
            .context("inserting studies")?;
        eprintln!("pgfeed-bench: {to} of {n} studies");
        from = to + 1;
    }
    // Two statements: a multi-statement query runs as one transaction, and VACUUM refuses that.
    conn.batch_execute("reset session_replication_role").await?;
    conn.batch_execute("vacuum analyze studies")
        .await
        .context("vacuum analyze studies")?;
    let took = t0.elapsed();
    let span = conn
        .query_one(
            r#"select min(id), max(id) from studies where label ~ '^L[0-9]{7}$'"#,
            &[],
        )
        .await?;
    Ok(Loaded {
        first_id: span.get::<_, Option<i64>>(0).context("no studies loaded")?,
        last_id: span.get::<_, Option<i64>>(1).context("no studies loaded")?,
        took,
        without_capture,
    })
}

/// What a writer sets: one of four statuses, a title (half of them near the top of title
/// order, where the windows are), or only the description (which moves the row in
/// `updated_at` order).
/// The writers' statements ([`random_update`] draws one).
pub const UPDATES: [&str; 3] = [
    "update studies set status = $2 where id = $1",
    "update studies set title = $2 where id = $1",
    "update studies set description = $2 where id = $1",
];

pub fn random_update(rng: &mut Rng) -> (&'static str, String) {
    match rng.below(100) {
        0..=34 => (UPDATES[0], STATUSES[rng.below(4) as usize].to_owned()),
        35..=69 => {
            let number = if rng.below(2) == 0 {
                rng.below(3_000)
            } else {
                rng.below(500_000)
            };
            (
                UPDATES[1],
                format!("{}{number:06}", TITLE_PREFIXES[rng.below(4) as usize]),
            )
        }
        _ => (UPDATES[2], format!("touched {}", rng.below(1_000_000))),
    }
}

/// splitmix64: the writers' choices, reproducible per writer, without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_definitions_are_distinct_and_a_hundred_each() {
        let mut all = shared();
        all.extend(new());
        assert_eq!(all.len(), 200);
        for (i, d) in all.iter().enumerate() {
            assert!(!all[..i].contains(d), "{d:?} twice");
        }
    }

    #[test]
    fn a_subscribe_frame_writes_the_filter_as_column_op_value() {
        let d = &shared()[10 + 2 + 1]; // filter 1, order 1, with count
        let frame = d.subscribe_frame("v7");
        assert_eq!(frame["filter"], json!({"status": "eq.draft"}));
        assert_eq!(
            (frame["order"].as_str(), frame["count"].as_bool()),
            (Some("title"), Some(true))
        );
        assert_eq!(frame["view"], "v7");
    }
}
