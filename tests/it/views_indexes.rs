//! Every sort and filter of the admin page is served by an index (issue 17: a million studies):
//! the window read a view sends PostgreSQL for each of the page's definitions is planned with
//! sequential scans and sorts priced out (`enable_seqscan`, `enable_sort` off), so a plan that
//! still has one has no index to use instead. Incremental sorts are allowed: a descending order
//! reads its index backwards, and the key's ties are then put in order group by group.

use std::collections::BTreeMap;
use std::sync::Arc;

use pgfeed::feed::views::def::{Def, Table};
use pgfeed::feed::views::Request;
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::support::TestDb;

/// The admin page's sorts (web/admin/table.js `orderOf`), each way.
const ORDERS: [&str; 10] = [
    "label.asc",
    "label.desc",
    "title.asc",
    "title.desc",
    "status.asc,title.asc",
    "status.desc,title.desc",
    "version.asc",
    "version.desc",
    "updated_at.asc",
    "updated_at.desc",
];

#[tokio::test]
async fn every_sort_and_filter_of_the_admin_page_reads_an_index() {
    // Arrange: studies enough for statistics, and a table as views see it.
    let db = TestDb::create().await;
    db.psql(
        "insert into studies (label, title, status)
         select 'L' || i, 'title ' || (i * 7919 % 10007), (array['draft','active','closed','archived'])[1 + i % 4]
         from generate_series(1, 20000) i;
         analyze studies;",
    );
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::Executor::execute(
                    conn,
                    "set enable_seqscan = off; set enable_sort = off; set plan_cache_mode = force_custom_plan",
                )
                .await?;
                Ok(())
            })
        })
        .connect(&db.url)
        .await
        .expect("pool");
    let (columns, pk) = pgfeed::db::views::columns(&pool, "studies")
        .await
        .expect("columns")
        .expect("studies is tracked");
    let table = Arc::new(Table::new("studies", "studies", columns, &pk).expect("table"));

    // Act: each sort, unfiltered, under the status filter, and on the page after the first; and
    // the total under the status filter.
    let mut unserved = Vec::new();
    for order in ORDERS {
        for status in [None, Some("eq.active")] {
            for after in [false, true] {
                let mut filter = BTreeMap::new();
                if let Some(s) = status {
                    filter.insert("status".to_owned(), s.to_owned());
                }
                let mut req = Request {
                    topic: "studies".into(),
                    filter,
                    order: Some(order.into()),
                    limit: Some(50),
                    after: None,
                    count: true,
                };
                if after {
                    req.after = Some(next_token(&pool, &table, &req).await);
                }
                let def = Def::parse(&req, table.clone(), &pool)
                    .await
                    .expect("a valid definition");
                let sql = def.sql(2 * 50);
                let what = format!("order {order}, status {status:?}, after the first page {after}");
                unserved.extend(
                    full_scans(&pool, &sql.rows, &sql.binds)
                        .await
                        .map(|p| format!("{what}: rows {p}")),
                );
                if status.is_some() && !after {
                    let count = sql.count.as_deref().expect("count asked");
                    unserved.extend(
                        full_scans(&pool, count, &sql.binds[..sql.count_binds])
                            .await
                            .map(|p| format!("{what}: count {p}")),
                    );
                }
            }
        }
    }

    // Assert
    assert!(unserved.is_empty(), "reads no index serves:\n{}", unserved.join("\n"));
}

/// The `next` token of the first page of `req`, as the window's frame would carry it.
async fn next_token(pool: &PgPool, table: &Arc<Table>, req: &Request) -> String {
    let def = Def::parse(req, table.clone(), pool).await.expect("a valid definition");
    let sql = def.sql(50);
    let mut q = sqlx::query_scalar::<_, String>(&sql.rows);
    for b in &sql.binds {
        q = q.bind(b);
    }
    let rows = q.fetch_all(pool).await.expect("first page");
    def.token(rows.last().expect("a full first page"))
}

/// The plan of `sql` when it has a sequential scan or a (full) sort: no index serves it.
async fn full_scans(pool: &PgPool, sql: &str, binds: &[String]) -> Option<String> {
    let explain = format!("explain (format json) {sql}");
    let mut q = sqlx::query_scalar::<_, Value>(&explain);
    for b in binds {
        q = q.bind(b);
    }
    let plan = q.fetch_one(pool).await.expect("explain");
    let mut nodes = Vec::new();
    node_types(&plan[0]["Plan"], &mut nodes);
    nodes
        .iter()
        .any(|n| n == "Seq Scan" || n == "Sort")
        .then(|| format!("{} ({sql})", nodes.join(" > ")))
}

fn node_types(node: &Value, out: &mut Vec<String>) {
    if let Some(t) = node["Node Type"].as_str() {
        out.push(t.to_owned());
    }
    for child in node["Plans"].as_array().into_iter().flatten() {
        node_types(child, out);
    }
}
