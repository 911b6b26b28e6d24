//! The tables in the feed (`pgfeed.tracked`): which topics exist and how to snapshot them.

use sqlx::PgExecutor;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Tracked {
    /// The table topic: `studies`, or `schema.table` outside `public`.
    pub topic: String,
    /// The table as a quoted, qualified SQL name, ready for `format!` into a query.
    pub relation: String,
    /// Primary key columns, quoted.
    pub pk: Vec<String>,
    /// Their types, for casting a row topic's key.
    pub pk_types: Vec<String>,
}

impl Tracked {
    /// Whether `key` could name a row of this table as the log names it. Row topics are logged
    /// with the key as PostgreSQL prints it, so an integer key must be in canonical decimal
    /// (`studies:1`, never `studies:01`, `studies:+1` or `studies: 1`): another spelling would
    /// pass authorization for row 1 yet match no logged topic, and a resume of it would walk the
    /// log for nothing. The same holds for each integer column of a composite key.
    pub fn key_is_plausible(&self, key: &str) -> bool {
        match self.pk_types.as_slice() {
            [t] if is_integer(t) => is_canonical_integer(key),
            [_] => true,
            many => {
                let parts: Vec<&str> = key.split(',').collect();
                parts.len() == many.len()
                    && parts
                        .iter()
                        .zip(many)
                        .all(|(part, t)| !is_integer(t) || is_canonical_integer(part))
            }
        }
    }
}

fn is_integer(pk_type: &str) -> bool {
    matches!(pk_type, "bigint" | "integer" | "smallint")
}

/// `0`, `42`, `-7`: what PostgreSQL's integer output prints, and nothing else.
fn is_canonical_integer(key: &str) -> bool {
    key.parse::<i64>().is_ok_and(|n| n.to_string() == key)
}

pub async fn load(db: impl PgExecutor<'_>) -> Result<Vec<Tracked>, sqlx::Error> {
    sqlx::query_as::<_, Tracked>(
        r#"select t.topic,
                  t.relid::text as relation,
                  array_agg(quote_ident(a.attname) order by k.ord) as pk,
                  array_agg(format_type(a.atttypid, a.atttypmod) order by k.ord) as pk_types
           from pgfeed.tracked t
           cross join lateral unnest(t.pk) with ordinality as k(col, ord)
           join pg_attribute a on a.attrelid = t.relid and a.attname = k.col
           group by t.topic, t.relid"#,
    )
    .fetch_all(db)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(types: &[&str]) -> Tracked {
        Tracked {
            topic: "t".into(),
            relation: "t".into(),
            pk: types.iter().map(|_| "k".to_owned()).collect(),
            pk_types: types.iter().map(|t| (*t).to_owned()).collect(),
        }
    }

    #[test]
    fn integer_keys_must_be_spelled_as_postgresql_prints_them() {
        let t = table(&["bigint"]);
        for ok in ["0", "1", "42", "-7", "9223372036854775807"] {
            assert!(t.key_is_plausible(ok), "{ok:?}");
        }
        for bad in [
            "01",
            "+1",
            " 1",
            "1 ",
            "-0",
            "00",
            "1e3",
            "",
            "x",
            "9223372036854775808",
        ] {
            assert!(!t.key_is_plausible(bad), "{bad:?}");
        }
        let pair = table(&["integer", "text"]);
        assert!(pair.key_is_plausible("1,01"));
        assert!(!pair.key_is_plausible("01,a"));
        assert!(!pair.key_is_plausible("1"));
        assert!(table(&["text"]).key_is_plausible("01"));
    }
}
