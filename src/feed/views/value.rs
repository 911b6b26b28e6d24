//! PLACEHOLDER until the `values` branch lands: the interface of view values, simplified.

use std::cmp::Ordering;

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
    pub fn from_pg(name: &str) -> Option<ColType> {
        Some(match name {
            "smallint" => ColType::SmallInt,
            "integer" => ColType::Integer,
            "bigint" => ColType::BigInt,
            "text" => ColType::Text,
            "boolean" => ColType::Boolean,
            "timestamp with time zone" => ColType::Timestamptz,
            _ => return None,
        })
    }

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
}

#[derive(Debug, Clone)]
pub enum Val {
    Null,
    Bool(bool),
    Int(i64),
    Text(Box<str>),
    Time(i64),
}

#[derive(Debug, thiserror::Error)]
#[error("bad value {0}")]
pub struct BadValue(String);

impl Val {
    pub fn from_json(ty: ColType, raw: &str) -> Result<Val, BadValue> {
        let v: serde_json::Value = serde_json::from_str(raw).map_err(|_| BadValue(raw.into()))?;
        let bad = || BadValue(raw.into());
        Ok(match (ty, v) {
            (_, serde_json::Value::Null) => Val::Null,
            (ColType::Boolean, serde_json::Value::Bool(b)) => Val::Bool(b),
            (ColType::SmallInt | ColType::Integer | ColType::BigInt, serde_json::Value::Number(n)) => {
                Val::Int(n.as_i64().ok_or_else(bad)?)
            }
            (ColType::Text | ColType::Varchar, serde_json::Value::String(s)) => Val::Text(s.into()),
            (ColType::Timestamptz, serde_json::Value::String(s)) => Val::Time(
                chrono::DateTime::parse_from_rfc3339(&s)
                    .map_err(|_| bad())?
                    .timestamp_micros(),
            ),
            _ => return Err(bad()),
        })
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Val::Null)
    }
}

pub fn cmp(a: &Val, b: &Val) -> Ordering {
    match (a, b) {
        (Val::Bool(a), Val::Bool(b)) => a.cmp(b),
        (Val::Int(a), Val::Int(b)) => a.cmp(b),
        (Val::Text(a), Val::Text(b)) => a.cmp(b),
        (Val::Time(a), Val::Time(b)) => a.cmp(b),
        _ => Ordering::Equal,
    }
}

#[derive(Debug, Clone)]
pub struct Lit {
    pub val: Val,
    pub json: String,
}

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
    Like(String),
    ILike(String),
}

impl Op {
    pub fn test(&self, v: &Val) -> bool {
        if v.is_null() {
            return matches!(self, Op::IsNull);
        }
        match self {
            Op::Eq(l) => cmp(v, &l.val).is_eq(),
            Op::Neq(l) => cmp(v, &l.val).is_ne(),
            Op::Lt(l) => cmp(v, &l.val).is_lt(),
            Op::Lte(l) => cmp(v, &l.val).is_le(),
            Op::Gt(l) => cmp(v, &l.val).is_gt(),
            Op::Gte(l) => cmp(v, &l.val).is_ge(),
            Op::In(ls) => ls.iter().any(|l| cmp(v, &l.val).is_eq()),
            Op::IsNull => false,
            Op::NotNull => true,
            Op::IsTrue => matches!(v, Val::Bool(true)),
            Op::IsFalse => matches!(v, Val::Bool(false)),
            Op::Like(p) => matches!(v, Val::Text(t) if glob(t, p, false)),
            Op::ILike(p) => matches!(v, Val::Text(t) if glob(t, p, true)),
        }
    }

    pub fn to_sql(&self, column: &str, ty: ColType, binds: &mut Vec<String>) -> String {
        let collate = if matches!(ty, ColType::Text | ColType::Varchar) {
            r#" collate "C""#
        } else {
            ""
        };
        let mut lit = |l: &Lit| {
            binds.push(l.json.clone());
            format!("(${}::jsonb #>> '{{}}')::{}", binds.len(), ty.sql())
        };
        match self {
            Op::Eq(l) => format!("{column}{collate} = {}", lit(l)),
            Op::Neq(l) => format!("{column}{collate} <> {}", lit(l)),
            Op::Lt(l) => format!("{column}{collate} < {}", lit(l)),
            Op::Lte(l) => format!("{column}{collate} <= {}", lit(l)),
            Op::Gt(l) => format!("{column}{collate} > {}", lit(l)),
            Op::Gte(l) => format!("{column}{collate} >= {}", lit(l)),
            Op::In(ls) => format!(
                "{column}{collate} in ({})",
                ls.iter().map(lit).collect::<Vec<_>>().join(", ")
            ),
            Op::IsNull => format!("{column} is null"),
            Op::NotNull => format!("{column} is not null"),
            Op::IsTrue => format!("{column} is true"),
            Op::IsFalse => format!("{column} is false"),
            Op::Like(p) | Op::ILike(p) => {
                let escaped: String = p
                    .chars()
                    .map(|c| match c {
                        '%' | '_' | '\\' => format!("\\{c}"),
                        '*' => "%".into(),
                        c => c.to_string(),
                    })
                    .collect();
                binds.push(serde_json::Value::String(escaped).to_string());
                let op = if matches!(self, Op::Like(_)) { "like" } else { "ilike" };
                format!("{column}{collate} {op} (${}::jsonb #>> '{{}}')", binds.len())
            }
        }
    }
}

fn glob(text: &str, pattern: &str, fold: bool) -> bool {
    let (t, p): (Vec<char>, Vec<char>) = if fold {
        (
            text.to_ascii_lowercase().chars().collect(),
            pattern.to_ascii_lowercase().chars().collect(),
        )
    } else {
        (text.chars().collect(), pattern.chars().collect())
    };
    let (mut ti, mut pi, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] != '*' && p[pi] == t[ti] {
            ti += 1;
            pi += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}
