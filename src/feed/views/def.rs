//! A view's definition (PROTOCOL §9): what a client asks for, checked against the table's
//! columns and read as PostgreSQL reads it, then compiled into what a window needs: the filter
//! and order evaluated in Rust on rows as JSON ([`super::value`]), and the same in SQL for the
//! window's reads (`db::views`).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::value::{self, ColType, Lit, Op, Val};
use crate::db::literals::{self, LiteralError};
use crate::db::views::{Column, WindowSql};
use crate::feed::FeedError;

/// Rows a window shows at most, and its default (PROTOCOL §9).
pub const MAX_LIMIT: i64 = 1000;
pub const DEFAULT_LIMIT: i64 = 100;
/// Bounds on one definition, so that evaluating it and its SQL stay small whatever a client asks:
/// filters (one per column), values in one `in.(…)`, order keys, and the length of one value.
pub const MAX_FILTERS: usize = 16;
pub const MAX_IN: usize = 100;
pub const MAX_ORDER: usize = 8;
pub const MAX_VALUE: usize = 1024;
/// Columns one filter may search together (`label|title`).
pub const MAX_ANY: usize = 4;
/// The longest `after` token accepted (it holds one value per order key and the key).
const MAX_TOKEN: usize = 16 * 1024;

/// What a client asks for, on any transport.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Request {
    pub topic: String,
    #[serde(default)]
    pub filter: BTreeMap<String, String>,
    pub order: Option<String>,
    pub limit: Option<i64>,
    pub after: Option<String>,
    #[serde(default)]
    pub count: bool,
}

/// A tracked table as views see it: its columns (those of an unsupported type cannot be filtered
/// or sorted on, but are still in the rows), and its primary key.
#[derive(Debug)]
pub struct Table {
    pub topic: String,
    /// The table as a quoted, qualified SQL name.
    pub relation: String,
    pub cols: Vec<Col>,
    /// Indices into `cols` of the primary key's columns, in key order.
    pub pk: Vec<usize>,
}

#[derive(Debug)]
pub struct Col {
    pub name: String,
    pub ty: Option<ColType>,
    pub not_null: bool,
}

/// One row of a table as views compare it: the value of each column (by index in `Table::cols`;
/// `Null` for an unsupported type), and its key as text (`42`, or `a,b` for a composite key).
#[derive(Debug)]
pub struct Parsed {
    pub vals: Vec<Val>,
    pub key: Arc<str>,
    /// [`key_hash`] of `key`.
    pub hash: u64,
}

/// The hash of a row key, the same in every window (one random seed per process): computed once
/// per row, so the windows a change meets probe their key sets without hashing it again each.
pub fn key_hash(key: &str) -> u64 {
    use std::hash::BuildHasher;
    static SEED: std::sync::LazyLock<foldhash::fast::RandomState> = std::sync::LazyLock::new(Default::default);
    SEED.hash_one(key)
}

impl Table {
    pub fn new(topic: &str, relation: &str, columns: Vec<Column>, pk: &[String]) -> Result<Table, FeedError> {
        let cols: Vec<Col> = columns
            .into_iter()
            .map(|c| Col {
                ty: ColType::from_pg(&c.pg_type),
                name: c.name,
                not_null: c.not_null,
            })
            .collect();
        let pk = pk
            .iter()
            .map(|k| cols.iter().position(|c| &c.name == k))
            .collect::<Option<Vec<_>>>()
            .filter(|pk| pk.iter().all(|&i| cols[i].ty.is_some()))
            .ok_or_else(|| {
                FeedError::BadRequest(format!(
                    "{topic:?} cannot be viewed: its primary key is of a type views cannot sort"
                ))
            })?;
        Ok(Table {
            topic: topic.to_owned(),
            relation: relation.to_owned(),
            cols,
            pk,
        })
    }

    fn column(&self, name: &str, what: &str) -> Result<(usize, ColType), FeedError> {
        let i = self
            .cols
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| FeedError::BadRequest(format!("unknown column {name:?} in {what}")))?;
        let ty = self.cols[i].ty.ok_or_else(|| {
            FeedError::BadRequest(format!("column {name:?} is of a type views cannot filter or sort on"))
        })?;
        Ok((i, ty))
    }

    /// A row as the capture trigger or a window's read rendered it. `None` for JSON that is no
    /// row of this table (never expected: the database wrote it).
    pub fn parse(&self, json: &str) -> Option<Parsed> {
        self.parse_map(&serde_json::from_str(json).ok()?)
    }

    /// A row from its columns' JSON texts (see [`Table::parse`]).
    pub fn parse_map(&self, map: &std::collections::HashMap<String, &RawValue>) -> Option<Parsed> {
        let vals = self
            .cols
            .iter()
            .map(|c| match (c.ty, map.get(&c.name)) {
                (Some(ty), Some(raw)) => Val::from_json(ty, raw.get()).ok(),
                _ => Some(Val::Null),
            })
            .collect::<Option<Vec<_>>>()?;
        let key = self
            .pk
            .iter()
            .map(|&i| {
                let raw = map.get(&self.cols[i].name).map_or("null", |r| r.get());
                match serde_json::from_str::<String>(raw) {
                    Ok(s) => s,
                    Err(_) => raw.to_owned(),
                }
            })
            .collect::<Vec<_>>()
            .join(",");
        Some(Parsed {
            vals,
            hash: key_hash(&key),
            key: key.into(),
        })
    }

    /// The JSON text of column `i` in a row, as rendered (for `next` tokens).
    fn raw_value(&self, json: &str, i: usize) -> String {
        serde_json::from_str::<std::collections::HashMap<String, &RawValue>>(json)
            .ok()
            .and_then(|m| m.get(&self.cols[i].name).map(|r| r.get().to_owned()))
            .unwrap_or_else(|| "null".into())
    }
}

/// One sort key: a column, its direction, and where its NULLs go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub col: usize,
    pub desc: bool,
    pub nulls_first: bool,
}

/// A checked definition: the filter, the order with the primary key appended, the keyset start,
/// the limit, whether to count; `id` is its canonical text, the same for every client that asks
/// for the same window, which they then share.
#[derive(Debug)]
pub struct Def {
    pub table: Arc<Table>,
    pub filter: Vec<(usize, Op)>,
    /// Filters over several columns (`label|title`), passed when any of their columns passes.
    pub any: Vec<(Vec<usize>, Op)>,
    pub keys: Vec<Key>,
    /// The keyset start: one value per key, from an `after` token.
    pub after: Option<Vec<Val>>,
    after_json: Option<Vec<String>>,
    pub limit: usize,
    pub count: bool,
    pub id: String,
}

impl Def {
    /// Checks `req` against `table` and reads its values as PostgreSQL does (one statement).
    pub async fn parse(req: &Request, table: Arc<Table>, pool: &sqlx::PgPool) -> Result<Def, FeedError> {
        let limit = req.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(FeedError::BadRequest(format!("limit must be 1 to {MAX_LIMIT}")));
        }
        if req.filter.len() > MAX_FILTERS {
            return Err(FeedError::BadRequest(format!("at most {MAX_FILTERS} filters")));
        }
        // Each filter as (its columns, type, op name, where its literal texts start, how many),
        // the texts read together below. A key `a|b` is a filter any of its columns may pass
        // (a search over label or title); its columns share one type.
        let mut parsed = Vec::new();
        let mut texts: Vec<(ColType, &str)> = Vec::new();
        for (name, spec) in &req.filter {
            let names: Vec<&str> = name.split('|').collect();
            if names.len() > MAX_ANY {
                return Err(FeedError::BadRequest(format!(
                    "filter on {name:?}: at most {MAX_ANY} columns"
                )));
            }
            let mut cols = Vec::new();
            let mut ty = None;
            for n in names {
                let (col, t) = table.column(n, "filter")?;
                if ty.is_some_and(|ty| ty != t) {
                    return Err(FeedError::BadRequest(format!(
                        "filter on {name:?}: its columns differ in type"
                    )));
                }
                ty = Some(t);
                cols.push(col);
            }
            let ty = ty.expect("split yields one name at least");
            let (op, values) = split_op(name, spec)?;
            check_op(name, op, ty)?;
            parsed.push((cols, ty, op, texts.len(), values.len(), spec.as_str()));
            texts.extend(values.into_iter().map(|v| (ty, v)));
        }
        let keys = order(&table, req.order.as_deref())?;
        let after_texts = match &req.after {
            None => None,
            Some(token) => Some(read_token(token, keys.len())?),
        };
        let after_start = texts.len();
        if let Some(vals) = &after_texts {
            for (k, v) in keys.iter().zip(vals) {
                if let Some(text) = v {
                    texts.push((
                        table.cols[k.col].ty.expect("keys are of supported types"),
                        text.as_str(),
                    ));
                }
            }
        }
        let json = match literals::read(pool, &texts).await {
            Ok(json) => json,
            Err(LiteralError::Bad { index, message }) => {
                let what = match parsed.iter().find(|p| index >= p.3 && index < p.3 + p.4) {
                    Some(p) => format!("filter on {:?}", table.cols[p.0[0]].name),
                    None => "after token".to_owned(),
                };
                return Err(FeedError::BadRequest(format!("{what}: {message}")));
            }
            Err(LiteralError::Db(e)) => return Err(e.into()),
        };
        let lit = |i: usize, ty: ColType| -> Result<Lit, FeedError> {
            let val = Val::from_json(ty, &json[i]).map_err(|e| FeedError::Internal(e.to_string()))?;
            Ok(Lit {
                val,
                json: json[i].clone(),
            })
        };
        let mut filter = Vec::new();
        let mut any = Vec::new();
        for (cols, ty, op, start, n, spec) in parsed {
            let op = match op {
                "eq" => Op::Eq(lit(start, ty)?),
                "neq" => Op::Neq(lit(start, ty)?),
                "lt" => Op::Lt(lit(start, ty)?),
                "lte" => Op::Lte(lit(start, ty)?),
                "gt" => Op::Gt(lit(start, ty)?),
                "gte" => Op::Gte(lit(start, ty)?),
                "in" => Op::In((start..start + n).map(|i| lit(i, ty)).collect::<Result<_, _>>()?),
                "is.null" => Op::IsNull,
                "not.is.null" => Op::NotNull,
                "is.true" => Op::IsTrue,
                "is.false" => Op::IsFalse,
                "like" => Op::Like(spec["like.".len()..].to_owned()),
                "ilike" => Op::ILike(spec["ilike.".len()..].to_owned()),
                _ => unreachable!("split_op knows only these"),
            };
            match cols.as_slice() {
                [col] => filter.push((*col, op)),
                _ => any.push((cols, op)),
            }
        }
        let (after, after_json) = match after_texts {
            None => (None, None),
            Some(vals) => {
                let mut next = after_start;
                let mut out = Vec::new();
                let mut out_json = Vec::new();
                for (k, v) in keys.iter().zip(vals) {
                    let ty = table.cols[k.col].ty.expect("keys are of supported types");
                    let text = match v {
                        Some(_) => {
                            next += 1;
                            json[next - 1].clone()
                        }
                        None => "null".to_owned(),
                    };
                    out.push(Val::from_json(ty, &text).map_err(|e| FeedError::Internal(e.to_string()))?);
                    out_json.push(text);
                }
                (Some(out), Some(out_json))
            }
        };
        let id = serde_json::json!({
            "topic": table.topic,
            "filter": filter.iter().map(|(c, op)| (table.cols[*c].name.clone(), op_id(op))).collect::<Vec<_>>(),
            "any": any.iter().map(|(cs, op)| (cs.clone(), op_id(op))).collect::<Vec<_>>(),
            "keys": keys.iter().map(|k| (k.col, k.desc, k.nulls_first)).collect::<Vec<_>>(),
            "after": after_json,
            "limit": limit,
            "count": req.count,
        })
        .to_string();
        Ok(Def {
            table,
            filter,
            any,
            keys,
            after,
            after_json,
            limit: limit as usize,
            count: req.count,
            id,
        })
    }

    /// A definition without filter, ordered by the key, for unit tests of windows.
    #[cfg(test)]
    pub fn by_key(table: Arc<Table>, limit: usize) -> Def {
        let keys = order(&table, None).expect("the key sorts");
        Def {
            table,
            filter: Vec::new(),
            any: Vec::new(),
            keys,
            after: None,
            after_json: None,
            limit,
            count: false,
            id: "test".into(),
        }
    }

    /// Whether a row matches the filter (every page's rows do; `count` counts them).
    pub fn matches(&self, row: &[Val]) -> bool {
        self.filter.iter().all(|(c, op)| op.test(&row[*c]))
            && self.any.iter().all(|(cs, op)| cs.iter().any(|c| op.test(&row[*c])))
    }

    /// Whether a matching row belongs to this window's pages: after the keyset start.
    pub fn past_start(&self, row: &[Val]) -> bool {
        match &self.after {
            None => true,
            Some(after) => self.cmp_to(row, after) == Ordering::Greater,
        }
    }

    /// The window's order of two rows (the primary key last, so never `Equal` for two rows).
    pub fn cmp(&self, a: &[Val], b: &[Val]) -> Ordering {
        self.keys
            .iter()
            .map(|k| key_cmp(k, &a[k.col], &b[k.col]))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    }

    /// A row against the keyset start (one value per key).
    fn cmp_to(&self, row: &[Val], start: &[Val]) -> Ordering {
        self.keys
            .iter()
            .zip(start)
            .map(|(k, s)| key_cmp(k, &row[k.col], s))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    }

    /// The `next` token of a window whose last row is `json`: the values of its keys.
    pub fn token(&self, json: &str) -> String {
        let vals: Vec<Box<RawValue>> = self
            .keys
            .iter()
            .map(|k| RawValue::from_string(self.table.raw_value(json, k.col)).expect("valid JSON from the database"))
            .collect();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_string(&vals).expect("JSON"))
    }

    /// The window's reads: up to `cap` rows from the start in order, and the count.
    pub fn sql(&self, cap: usize) -> WindowSql {
        let t = &self.table;
        let col = |i: usize| format!("r.{}", quote(&t.cols[i].name));
        let mut binds = Vec::new();
        let mut filter: Vec<String> = self
            .filter
            .iter()
            .map(|(c, op)| op.to_sql(&col(*c), t.cols[*c].ty.expect("checked"), &mut binds))
            .collect();
        for (cs, op) in &self.any {
            let each: Vec<String> = cs
                .iter()
                .map(|c| op.to_sql(&col(*c), t.cols[*c].ty.expect("checked"), &mut binds))
                .collect();
            filter.push(format!("({})", each.join(" or ")));
        }
        if filter.is_empty() {
            filter.push("true".into());
        }
        let filter = filter.join(" and ");
        let count_binds = binds.len();
        let start = match &self.after_json {
            None => "true".to_owned(),
            Some(vals) => self.start_sql(vals, &col, &mut binds),
        };
        let order = self
            .keys
            .iter()
            .map(|k| {
                let ty = t.cols[k.col].ty.expect("checked");
                format!(
                    "{}{} {} {}",
                    col(k.col),
                    collate(ty),
                    if k.desc { "desc" } else { "asc" },
                    if k.nulls_first { "nulls first" } else { "nulls last" }
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let rel = &t.relation;
        WindowSql {
            rows: format!(
                "select pgfeed.serialize(r)::text from {rel} r where ({filter}) and ({start}) order by {order} limit {cap}"
            ),
            count: self.count.then(|| format!("select count(*) from {rel} r where {filter}")),
            binds,
            count_binds,
        }
    }

    /// SQL for "after the keyset start": (k1 after a1) or (k1 = a1 and k2 after a2) or …, with each
    /// key's direction and NULL placement; and, where the first key cannot be NULL, a plain range
    /// on it too, so the read is an index range scan rather than a scan from the first row.
    fn start_sql(&self, vals: &[String], col: &dyn Fn(usize) -> String, binds: &mut Vec<String>) -> String {
        let t = &self.table;
        let mut params = Vec::new();
        for (k, v) in self.keys.iter().zip(vals) {
            let ty = t.cols[k.col].ty.expect("checked");
            if v == "null" {
                params.push(None);
            } else {
                binds.push(v.clone());
                params.push(Some(format!("(${}::jsonb #>> '{{}}')::{}", binds.len(), ty.sql())));
            }
        }
        let mut ors = Vec::new();
        for (i, k) in self.keys.iter().enumerate() {
            let mut ands: Vec<String> = Vec::new();
            for (j, kj) in self.keys[..i].iter().enumerate() {
                let c = format!("{}{}", col(kj.col), collate(t.cols[kj.col].ty.expect("checked")));
                ands.push(match &params[j] {
                    None => format!("{} is null", col(kj.col)),
                    Some(p) => format!("{c} = {p}"),
                });
            }
            let c = format!("{}{}", col(k.col), collate(t.cols[k.col].ty.expect("checked")));
            let after = match &params[i] {
                None if k.nulls_first => format!("{} is not null", col(k.col)),
                None => "false".to_owned(),
                Some(p) => {
                    let cmp = format!("{c} {} {p}", if k.desc { "<" } else { ">" });
                    if k.nulls_first {
                        cmp
                    } else {
                        format!("({cmp} or {} is null)", col(k.col))
                    }
                }
            };
            ands.push(after);
            ors.push(format!("({})", ands.join(" and ")));
        }
        let mut sql = ors.join(" or ");
        let first = self.keys[0];
        if let (Some(p), true) = (&params[0], t.cols[first.col].not_null) {
            let c = format!("{}{}", col(first.col), collate(t.cols[first.col].ty.expect("checked")));
            sql = format!("{c} {} {p} and ({sql})", if first.desc { "<=" } else { ">=" });
        }
        sql
    }
}

/// A key's order of two values: its direction, NULLs where it puts them.
fn key_cmp(k: &Key, a: &Val, b: &Val) -> Ordering {
    match (a.is_null(), b.is_null()) {
        (true, true) => Ordering::Equal,
        (true, false) => {
            if k.nulls_first {
                Ordering::Less
            } else {
                Ordering::Greater
            }
        }
        (false, true) => {
            if k.nulls_first {
                Ordering::Greater
            } else {
                Ordering::Less
            }
        }
        (false, false) => {
            let o = value::cmp(a, b);
            if k.desc {
                o.reverse()
            } else {
                o
            }
        }
    }
}

fn collate(ty: ColType) -> &'static str {
    if matches!(ty, ColType::Text | ColType::Varchar) {
        r#" collate "C""#
    } else {
        ""
    }
}

/// A quoted SQL identifier.
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `op.value` into the op's name and its literal texts (none for `is.…` and like patterns).
fn split_op<'a>(col: &str, spec: &'a str) -> Result<(&'static str, Vec<&'a str>), FeedError> {
    let bad = |why: &str| FeedError::BadRequest(format!("filter on {col:?}: {why}"));
    if spec.len() > MAX_VALUE {
        return Err(bad(&format!("over {MAX_VALUE} bytes")));
    }
    for fixed in ["is.null", "not.is.null", "is.true", "is.false"] {
        if spec == fixed {
            return Ok((fixed, vec![]));
        }
    }
    let (op, value) = spec
        .split_once('.')
        .ok_or_else(|| bad("expected op.value, such as eq.active"))?;
    let op = match op {
        "eq" => "eq",
        "neq" => "neq",
        "lt" => "lt",
        "lte" => "lte",
        "gt" => "gt",
        "gte" => "gte",
        "like" => return Ok(("like", vec![])),
        "ilike" => return Ok(("ilike", vec![])),
        "in" => {
            let items = value
                .strip_prefix('(')
                .and_then(|v| v.strip_suffix(')'))
                .ok_or_else(|| bad("in takes a list: in.(a,b,c)"))?;
            let items = split_list(items).ok_or_else(|| bad("unbalanced quotes in the list"))?;
            if items.is_empty() || items.len() > MAX_IN {
                return Err(bad(&format!("in takes 1 to {MAX_IN} values")));
            }
            return Ok(("in", items));
        }
        other => {
            return Err(bad(&format!(
                "unknown op {other:?} (eq, neq, lt, lte, gt, gte, in, is.null, not.is.null, is.true, is.false, like, ilike)"
            )))
        }
    };
    Ok((op, vec![value]))
}

/// The items of an `in.(…)` list: comma-separated, an item in double quotes may hold commas.
fn split_list(s: &str) -> Option<Vec<&str>> {
    let mut out = Vec::new();
    let mut rest = s;
    loop {
        if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted.find('"')?;
            out.push(&quoted[..end]);
            rest = &quoted[end + 1..];
            match rest.strip_prefix(',') {
                Some(r) => rest = r,
                None if rest.is_empty() => return Some(out),
                None => return None,
            }
        } else {
            match rest.split_once(',') {
                Some((item, r)) => {
                    out.push(item);
                    rest = r;
                }
                None => {
                    out.push(rest);
                    return Some(out);
                }
            }
        }
    }
}

fn check_op(col: &str, op: &str, ty: ColType) -> Result<(), FeedError> {
    let ok = match op {
        "like" | "ilike" => matches!(ty, ColType::Text | ColType::Varchar),
        "is.true" | "is.false" => ty == ColType::Boolean,
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(FeedError::BadRequest(format!(
            "filter on {col:?}: {op} does not apply to a column of type {}",
            ty.sql()
        )))
    }
}

/// The canonical text of an op, for the definition's id.
fn op_id(op: &Op) -> String {
    match op {
        Op::Eq(l) => format!("eq {}", l.json),
        Op::Neq(l) => format!("neq {}", l.json),
        Op::Lt(l) => format!("lt {}", l.json),
        Op::Lte(l) => format!("lte {}", l.json),
        Op::Gt(l) => format!("gt {}", l.json),
        Op::Gte(l) => format!("gte {}", l.json),
        Op::In(ls) => format!(
            "in {}",
            ls.iter().map(|l| l.json.as_str()).collect::<Vec<_>>().join(",")
        ),
        Op::IsNull => "is.null".into(),
        Op::NotNull => "not.is.null".into(),
        Op::IsTrue => "is.true".into(),
        Op::IsFalse => "is.false".into(),
        Op::Like(p) => format!("like {p}"),
        Op::ILike(p) => format!("ilike {p}"),
    }
}

/// `column[.asc|.desc][.nullsfirst|.nullslast]`, comma-separated, then the primary key's columns
/// not named (ascending).
fn order(table: &Table, spec: Option<&str>) -> Result<Vec<Key>, FeedError> {
    let mut keys: Vec<Key> = Vec::new();
    for part in spec.unwrap_or("").split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if keys.len() == MAX_ORDER {
            return Err(FeedError::BadRequest(format!("at most {MAX_ORDER} order keys")));
        }
        let mut bits = part.split('.');
        let name = bits.next().unwrap_or_default();
        let (col, _) = table.column(name, "order")?;
        let mut desc = false;
        let mut nulls = None;
        for bit in bits {
            match bit {
                "asc" => desc = false,
                "desc" => desc = true,
                "nullsfirst" => nulls = Some(true),
                "nullslast" => nulls = Some(false),
                other => {
                    return Err(FeedError::BadRequest(format!(
                        "order {part:?}: unknown {other:?} (asc, desc, nullsfirst, nullslast)"
                    )))
                }
            }
        }
        if keys.iter().any(|k| k.col == col) {
            return Err(FeedError::BadRequest(format!("order names {name:?} twice")));
        }
        // PostgreSQL's default: NULLs sort as if larger than every value.
        keys.push(Key {
            col,
            desc,
            nulls_first: nulls.unwrap_or(desc),
        });
    }
    for &col in &table.pk {
        if !keys.iter().any(|k| k.col == col) {
            keys.push(Key {
                col,
                desc: false,
                nulls_first: false,
            });
        }
    }
    Ok(keys)
}

/// An `after` token: one JSON value per key. Returns each as the literal text PostgreSQL reads
/// (a JSON string's content, a number or boolean as written), `None` for null.
fn read_token(token: &str, keys: usize) -> Result<Vec<Option<String>>, FeedError> {
    let bad = || FeedError::BadRequest("after: not a next token of this view's order".into());
    if token.len() > MAX_TOKEN {
        return Err(bad());
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let vals: Vec<serde_json::Value> = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if vals.len() != keys {
        return Err(bad());
    }
    vals.into_iter()
        .map(|v| match v {
            serde_json::Value::Null => Ok(None),
            serde_json::Value::String(s) => Ok(Some(s)),
            serde_json::Value::Number(n) => Ok(Some(n.to_string())),
            serde_json::Value::Bool(b) => Ok(Some(b.to_string())),
            _ => Err(bad()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_lists_split_on_commas_outside_quotes() {
        assert_eq!(split_list("a,b,c").unwrap(), ["a", "b", "c"]);
        assert_eq!(split_list(r#""a,b",c"#).unwrap(), ["a,b", "c"]);
        assert_eq!(split_list(r#"a,"b""#).unwrap(), ["a", "b"]);
        assert!(split_list(r#""a"#).is_none());
    }

    #[test]
    fn ops_are_read_or_refused_by_name() {
        assert_eq!(split_op("s", "eq.active").unwrap(), ("eq", vec!["active"]));
        assert_eq!(split_op("s", "eq.a.b").unwrap(), ("eq", vec!["a.b"]));
        assert_eq!(split_op("s", "not.is.null").unwrap(), ("not.is.null", vec![]));
        assert_eq!(split_op("s", "in.(1,2)").unwrap(), ("in", vec!["1", "2"]));
        assert!(split_op("s", "between.1").is_err());
        assert!(split_op("s", "active").is_err());
        assert!(split_op("s", "in.1,2").is_err());
    }
}
