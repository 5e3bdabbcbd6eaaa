//! The SQL layer under [`super::Db`]: one connection type over the two backends (embedded
//! SQLite, or PostgreSQL for several servers), values and rows that are the same for both,
//! and the one rewrite that lets a query be written once (see the module doc of `db.rs`).

use std::cell::{Cell, RefCell};

use postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use super::{RunState, StepState};

/// Which database a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database error, whichever backend.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{}", pg_message(.0))]
    Postgres(#[from] postgres::Error),
    #[error("no row")]
    NoRow,
    #[error("column {0}: {1}")]
    Type(usize, String),
}

/// PostgreSQL's own words (its `Display` says only "db error").
fn pg_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{}: {}", d.severity(), d.message()),
        None => e.to_string(),
    }
}

pub type Result<T, E = SqlError> = std::result::Result<T, E>;

/// One SQL value, as both backends take and give it. Integers (booleans too, as 0 and 1)
/// are 64-bit.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// What can be a query's parameter.
pub trait ToValue {
    fn to_value(&self) -> Value;
}

/// What a column can be read as.
pub trait FromValue: Sized {
    fn from_value(v: &Value) -> std::result::Result<Self, String>;
}

macro_rules! ints {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Value { Value::Int(*self as i64) }
        }
        impl FromValue for $t {
            fn from_value(v: &Value) -> std::result::Result<Self, String> {
                match v {
                    Value::Int(n) => <$t>::try_from(*n).map_err(|e| e.to_string()),
                    other => Err(format!("expected an integer, found {other:?}")),
                }
            }
        }
    )*};
}
ints!(i64, i32, u32);

impl ToValue for u64 {
    // GitHub's ids fit in an i64; the database keeps them so.
    fn to_value(&self) -> Value {
        Value::Int(*self as i64)
    }
}
impl ToValue for bool {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}
impl FromValue for bool {
    fn from_value(v: &Value) -> std::result::Result<Self, String> {
        i64::from_value(v).map(|n| n != 0)
    }
}
impl ToValue for f64 {
    fn to_value(&self) -> Value {
        Value::Real(*self)
    }
}
impl FromValue for f64 {
    fn from_value(v: &Value) -> std::result::Result<Self, String> {
        match v {
            Value::Real(f) => Ok(*f),
            Value::Int(n) => Ok(*n as f64),
            other => Err(format!("expected a number, found {other:?}")),
        }
    }
}
impl ToValue for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_string())
    }
}
impl ToValue for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}
impl FromValue for String {
    fn from_value(v: &Value) -> std::result::Result<Self, String> {
        match v {
            Value::Text(s) => Ok(s.clone()),
            other => Err(format!("expected text, found {other:?}")),
        }
    }
}
impl ToValue for Vec<u8> {
    fn to_value(&self) -> Value {
        Value::Blob(self.clone())
    }
}
impl FromValue for Vec<u8> {
    fn from_value(v: &Value) -> std::result::Result<Self, String> {
        match v {
            Value::Blob(b) => Ok(b.clone()),
            other => Err(format!("expected bytes, found {other:?}")),
        }
    }
}
impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}
impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value {
        self.as_ref().map_or(Value::Null, T::to_value)
    }
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: &Value) -> std::result::Result<Self, String> {
        match v {
            Value::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}
impl ToValue for Value {
    fn to_value(&self) -> Value {
        self.clone()
    }
}

macro_rules! states {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Value { Value::Text(self.as_str().into()) }
        }
        impl FromValue for $t {
            fn from_value(v: &Value) -> std::result::Result<Self, String> {
                let s = String::from_value(v)?;
                <$t>::parse(&s).ok_or_else(|| format!("unknown status `{s}`"))
            }
        }
    )*};
}
states!(RunState, StepState);

/// A query's parameters: `params![a, b]` is `?1`, `?2`.
macro_rules! params {
    () => { &[] as &[&dyn $crate::server::db::sql::ToValue] };
    ($($x:expr),+ $(,)?) => { &[$(&$x as &dyn $crate::server::db::sql::ToValue),+] as &[&dyn $crate::server::db::sql::ToValue] };
}
pub(crate) use params;

/// One row of a result, read in full.
#[derive(Debug)]
pub struct Row(Vec<Value>);

impl Row {
    /// Column `i` (from 0) as a `T`.
    pub fn get<T: FromValue>(&self, i: usize) -> Result<T> {
        let v = self.0.get(i).ok_or_else(|| SqlError::Type(i, "no such column".into()))?;
        T::from_value(v).map_err(|e| SqlError::Type(i, e))
    }
}

/// `query_row(...).optional()`: no row is `None`.
pub trait OptionalExt<T> {
    fn optional(self) -> Result<Option<T>>;
}
impl<T> OptionalExt<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(SqlError::NoRow) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

enum Inner {
    Sqlite(rusqlite::Connection),
    Postgres(Box<postgres::Client>),
}

/// A connection to either backend. Every statement goes through [`Conn::rewrite`].
pub struct Conn {
    inner: RefCell<Inner>,
    /// What the current transaction asks to announce at its commit (PostgreSQL's NOTIFY).
    notes: RefCell<Vec<&'static str>>,
    savepoints: Cell<u32>,
}

/// The channel of PostgreSQL's NOTIFY that wakes the other servers.
pub const CHANNEL: &str = "orch_wake";

impl Conn {
    pub fn sqlite(c: rusqlite::Connection) -> Conn {
        Conn::new(Inner::Sqlite(c))
    }

    /// Connects to PostgreSQL (`postgres://user@host:port/db`), without TLS. Not from an
    /// async thread: the client runs its own runtime.
    pub fn postgres(url: &str) -> Result<Conn> {
        Ok(Conn::new(Inner::Postgres(Box::new(pg_connect(url)?))))
    }

    fn new(inner: Inner) -> Conn {
        Conn { inner: RefCell::new(inner), notes: RefCell::new(Vec::new()), savepoints: Cell::new(0) }
    }

    pub fn backend(&self) -> Backend {
        match &*self.inner.borrow() {
            Inner::Sqlite(_) => Backend::Sqlite,
            Inner::Postgres(_) => Backend::Postgres,
        }
    }

    pub fn is_postgres(&self) -> bool {
        self.backend() == Backend::Postgres
    }

    /// Whether a PostgreSQL connection was lost (SQLite's never is).
    pub fn is_closed(&self) -> bool {
        match &*self.inner.borrow() {
            Inner::Sqlite(_) => false,
            Inner::Postgres(c) => c.is_closed(),
        }
    }

    /// The SQLite connection, for what only SQLite has (pragmas); `None` on PostgreSQL.
    pub fn with_sqlite<R>(&self, f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<R>) -> Result<Option<R>> {
        match &*self.inner.borrow() {
            Inner::Sqlite(c) => Ok(Some(f(c)?)),
            Inner::Postgres(_) => Ok(None),
        }
    }

    /// Asks the current transaction to wake the other servers at its commit with `what`
    /// (PostgreSQL; nothing on SQLite, whose one server wakes itself).
    pub fn notify(&self, what: &'static str) {
        if self.is_postgres() {
            let mut n = self.notes.borrow_mut();
            if !n.contains(&what) {
                n.push(what);
            }
        }
    }

    /// Statements with no parameters and no result, `;`-separated.
    pub fn execute_batch(&self, sql: &str) -> Result<()> {
        match &mut *self.inner.borrow_mut() {
            Inner::Sqlite(c) => c.execute_batch(sql)?,
            Inner::Postgres(c) => c.batch_execute(sql)?,
        }
        Ok(())
    }

    /// Runs one statement; returns the rows it changed.
    pub fn execute(&self, sql: &str, params: &[&dyn ToValue]) -> Result<usize> {
        let sql = rewrite(sql, self.backend());
        let values: Vec<Value> = params.iter().map(|p| p.to_value()).collect();
        match &mut *self.inner.borrow_mut() {
            Inner::Sqlite(c) => {
                let mut st = c.prepare_cached(&sql)?;
                Ok(st.execute(rusqlite::params_from_iter(values.iter().map(lite_value)))?)
            }
            Inner::Postgres(c) => {
                let refs: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
                Ok(c.execute(sql.as_ref(), &refs)? as usize)
            }
        }
    }

    /// Every row of a query, read in full.
    pub fn query(&self, sql: &str, params: &[&dyn ToValue]) -> Result<Vec<Row>> {
        let sql = rewrite(sql, self.backend());
        let values: Vec<Value> = params.iter().map(|p| p.to_value()).collect();
        match &mut *self.inner.borrow_mut() {
            Inner::Sqlite(c) => {
                let mut st = c.prepare_cached(&sql)?;
                let n = st.column_count();
                let mut rows = st.query(rusqlite::params_from_iter(values.iter().map(lite_value)))?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    let mut row = Vec::with_capacity(n);
                    for i in 0..n {
                        row.push(from_lite(r.get_ref(i)?));
                    }
                    out.push(Row(row));
                }
                Ok(out)
            }
            Inner::Postgres(c) => {
                let refs: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
                c.query(sql.as_ref(), &refs)?.iter().map(from_pg).collect()
            }
        }
    }

    /// The rows of a query, each made into a `T` by `f`.
    pub fn query_map<T>(&self, sql: &str, params: &[&dyn ToValue], f: impl FnMut(&Row) -> Result<T>) -> Result<Vec<T>> {
        self.query(sql, params)?.iter().map(f).collect()
    }

    /// The first row of a query made into a `T`; [`SqlError::NoRow`] when there is none
    /// (`.optional()` makes that `None`).
    pub fn query_row<T>(&self, sql: &str, params: &[&dyn ToValue], f: impl FnOnce(&Row) -> Result<T>) -> Result<T> {
        let rows = self.query(sql, params)?;
        rows.first().map_or(Err(SqlError::NoRow), f)
    }

    /// Starts the writer's transaction (on SQLite taking the write lock at once: waiting
    /// for another process's writer then, with the busy timeout, instead of failing when
    /// a read in it turns into a write).
    pub fn begin(&self) -> Result<()> {
        self.notes.borrow_mut().clear();
        match self.backend() {
            Backend::Sqlite => self.execute_batch("BEGIN IMMEDIATE"),
            Backend::Postgres => self.execute_batch("BEGIN"),
        }
    }

    /// Commits it, announcing what it asked to (PostgreSQL delivers a NOTIFY at commit).
    pub fn commit(&self) -> Result<()> {
        let notes = std::mem::take(&mut *self.notes.borrow_mut());
        for what in notes {
            self.execute_batch(&format!("NOTIFY {CHANNEL}, '{what}'"))?;
        }
        self.execute_batch("COMMIT")
    }

    pub fn rollback(&self) -> Result<()> {
        self.notes.borrow_mut().clear();
        self.execute_batch("ROLLBACK")
    }

    /// Runs `f` in a savepoint of the current transaction: when it fails, what it did is
    /// undone and the transaction goes on (PostgreSQL would refuse every later statement
    /// of a transaction with a failed one; the group commit must not lose its neighbours).
    pub fn savepoint<R>(&self, f: impl FnOnce(&Conn) -> Result<R>) -> Result<R> {
        let depth = self.savepoints.get();
        let name = format!("sp{depth}");
        self.execute_batch(&format!("SAVEPOINT {name}"))?;
        self.savepoints.set(depth + 1);
        let notes = self.notes.borrow().len();
        let out = f(self);
        self.savepoints.set(depth);
        match out {
            Ok(v) => {
                self.execute_batch(&format!("RELEASE SAVEPOINT {name}"))?;
                Ok(v)
            }
            Err(e) => {
                self.notes.borrow_mut().truncate(notes);
                self.execute_batch(&format!("ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}"))?;
                Err(e)
            }
        }
    }
}

/// A PostgreSQL client for `url`, without TLS, giving up on a host that does not answer
/// within 10 s (unless the URL says `connect_timeout`).
pub fn pg_connect(url: &str) -> Result<postgres::Client> {
    let mut cfg: postgres::Config = url.parse()?;
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(std::time::Duration::from_secs(10));
    }
    Ok(cfg.connect(postgres::NoTls)?)
}

/// The one rewrite between the backends: `?N` placeholders become PostgreSQL's `$N`, and
/// `FOR UPDATE SKIP LOCKED` (a row claimed by one server of several) is dropped on SQLite,
/// whose single writer claims alone. Quoted text is left as it is.
pub fn rewrite(sql: &str, backend: Backend) -> std::borrow::Cow<'_, str> {
    match backend {
        Backend::Sqlite if sql.contains(SKIP_LOCKED) => sql.replace(SKIP_LOCKED, "").into(),
        Backend::Sqlite => sql.into(),
        Backend::Postgres => {
            let mut out = String::with_capacity(sql.len());
            let mut quoted = false;
            let mut chars = sql.chars().peekable();
            while let Some(c) = chars.next() {
                match c {
                    '\'' => {
                        quoted = !quoted;
                        out.push(c);
                    }
                    '?' if !quoted && chars.peek().is_some_and(char::is_ascii_digit) => out.push('$'),
                    _ => out.push(c),
                }
            }
            out.into()
        }
    }
}

const SKIP_LOCKED: &str = " FOR UPDATE SKIP LOCKED";

/// The schema text written once, in SQLite's words, said in PostgreSQL's: 64-bit integers
/// (its INTEGER is 32-bit), identity columns for AUTOINCREMENT, DOUBLE PRECISION, BYTEA.
pub fn ddl(sql: &str, backend: Backend) -> String {
    match backend {
        Backend::Sqlite => sql.to_string(),
        Backend::Postgres => sql
            .replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")
            .replace("INTEGER", "BIGINT")
            .replace("REAL", "DOUBLE PRECISION")
            .replace("BLOB", "BYTEA"),
    }
}

fn lite_value(v: &Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as L;
    match v {
        Value::Null => L::Null,
        Value::Int(n) => L::Integer(*n),
        Value::Real(f) => L::Real(*f),
        Value::Text(s) => L::Text(s.clone()),
        Value::Blob(b) => L::Blob(b.clone()),
    }
}

fn from_lite(v: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef as L;
    match v {
        L::Null => Value::Null,
        L::Integer(n) => Value::Int(n),
        L::Real(f) => Value::Real(f),
        L::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        L::Blob(b) => Value::Blob(b.to_vec()),
    }
}

fn from_pg(r: &postgres::Row) -> Result<Row> {
    let mut row = Vec::with_capacity(r.len());
    for (i, col) in r.columns().iter().enumerate() {
        let t = col.type_();
        let v = if *t == Type::INT8 {
            r.try_get::<_, Option<i64>>(i)?.map(Value::Int)
        } else if *t == Type::INT4 {
            r.try_get::<_, Option<i32>>(i)?.map(|n| Value::Int(n.into()))
        } else if *t == Type::INT2 {
            r.try_get::<_, Option<i16>>(i)?.map(|n| Value::Int(n.into()))
        } else if *t == Type::BOOL {
            r.try_get::<_, Option<bool>>(i)?.map(|b| Value::Int(b.into()))
        } else if *t == Type::FLOAT8 {
            r.try_get::<_, Option<f64>>(i)?.map(Value::Real)
        } else if *t == Type::FLOAT4 {
            r.try_get::<_, Option<f32>>(i)?.map(|f| Value::Real(f.into()))
        } else if *t == Type::BYTEA {
            r.try_get::<_, Option<Vec<u8>>>(i)?.map(Value::Blob)
        } else if *t == Type::VOID {
            // pg_notify's and the like.
            None
        } else if [Type::TEXT, Type::VARCHAR, Type::BPCHAR, Type::NAME].contains(t) {
            r.try_get::<_, Option<String>>(i)?.map(Value::Text)
        } else {
            return Err(SqlError::Type(i, format!("PostgreSQL type {t} is not read here")));
        };
        row.push(v.unwrap_or(Value::Null));
    }
    Ok(Row(row))
}

/// A parameter takes the type PostgreSQL infers for it: an integer binds as any integer
/// type (or a boolean), text as any text type.
impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(n) => {
                let n = *n;
                if *ty == Type::INT8 {
                    n.to_sql(ty, out)
                } else if *ty == Type::INT4 {
                    i32::try_from(n)?.to_sql(ty, out)
                } else if *ty == Type::INT2 {
                    i16::try_from(n)?.to_sql(ty, out)
                } else if *ty == Type::BOOL {
                    (n != 0).to_sql(ty, out)
                } else if *ty == Type::FLOAT8 {
                    (n as f64).to_sql(ty, out)
                } else if [Type::TEXT, Type::VARCHAR, Type::UNKNOWN].contains(ty) {
                    n.to_string().to_sql(&Type::TEXT, out)
                } else {
                    Err(format!("an integer for a parameter of type {ty}").into())
                }
            }
            Value::Real(f) if *ty == Type::FLOAT4 => (*f as f32).to_sql(ty, out),
            Value::Real(f) => f.to_sql(ty, out),
            Value::Text(s) => s.as_str().to_sql(ty, out),
            Value::Blob(b) => b.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_written_once_and_rewritten_for_postgres() {
        let q = "SELECT id FROM runs WHERE id = ?1 AND reason <> 'why?1' AND x IN (?2, ?10) FOR UPDATE SKIP LOCKED";
        assert_eq!(
            rewrite(q, Backend::Postgres),
            "SELECT id FROM runs WHERE id = $1 AND reason <> 'why?1' AND x IN ($2, $10) FOR UPDATE SKIP LOCKED"
        );
        assert_eq!(
            rewrite(q, Backend::Sqlite),
            "SELECT id FROM runs WHERE id = ?1 AND reason <> 'why?1' AND x IN (?2, ?10)"
        );
        assert_eq!(rewrite("SELECT ?", Backend::Postgres), "SELECT ?", "only numbered ones");
    }

    #[test]
    fn the_schema_is_said_in_postgres_words() {
        let t = "CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, n INTEGER, f REAL, b BLOB)";
        assert_eq!(
            ddl(t, Backend::Postgres),
            "CREATE TABLE t (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, n BIGINT, f DOUBLE PRECISION, b BYTEA)"
        );
        assert_eq!(ddl(t, Backend::Sqlite), t);
    }

    #[test]
    fn values_round_trip_through_sqlite() {
        let c = Conn::sqlite(rusqlite::Connection::open_in_memory().unwrap());
        let row = c
            .query_row(
                "SELECT ?1, ?2, ?3, ?4, ?5",
                params![StepState::TimedOut, 7i64, true, Option::<String>::None, 1.5f64],
                |r| {
                    Ok((
                        r.get::<StepState>(0)?,
                        r.get::<i64>(1)?,
                        r.get::<bool>(2)?,
                        r.get::<Option<String>>(3)?,
                        r.get::<f64>(4)?,
                    ))
                },
            )
            .unwrap();
        assert_eq!(row, (StepState::TimedOut, 7, true, None, 1.5));
        let bad = c.query_row("SELECT 'done'", params![], |r| r.get::<RunState>(0));
        assert!(matches!(bad, Err(SqlError::Type(0, _))), "{bad:?}");
        assert!(matches!(c.query_row("SELECT 1 WHERE 0", params![], |r| r.get::<i64>(0)).optional(), Ok(None)));
    }
}
