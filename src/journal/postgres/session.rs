//! How freshet talks to PostgreSQL on one pooled connection: every statement's parameter
//! types given by us, so the server is never asked to infer them; prepared once per
//! connection and cached (one round trip each time after the first, and the server's
//! plan cache spares the planning, which was most of a claim's time), except behind a
//! transaction pooler, where a named statement could be handed to another client with
//! the server connection: there each statement is sent unnamed (`query_typed`, as
//! graphile-worker's `preparedStatements: false`). Behind PgBouncer in transaction mode, every transaction
//! sets the session's settings with `SET LOCAL` (a session `SET` or startup option would
//! stay on a server connection other clients get); and a statement whose future is
//! dropped (its call timed out) cancels its query and discards the connection, so no
//! busy connection goes back to the pool.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Row;
use tokio_postgres_rustls::MakeRustlsConnect;

/// A statement parameter, with the PostgreSQL type freshet sends it as (the server is
/// not asked to infer it: that is what the round trip of a prepare was for).
pub(crate) trait Param: ToSql + Sync {
    fn pg_type(&self) -> Type;
}

macro_rules! param {
    ($($rust:ty => $pg:expr),* $(,)?) => {$(
        impl Param for $rust {
            fn pg_type(&self) -> Type {
                $pg
            }
        }
    )*};
}

param!(
    i64 => Type::INT8,
    i32 => Type::INT4,
    bool => Type::BOOL,
    String => Type::TEXT,
    &str => Type::TEXT,
    Vec<i64> => Type::INT8_ARRAY,
    Vec<i32> => Type::INT4_ARRAY,
    Vec<bool> => Type::BOOL_ARRAY,
    Vec<String> => Type::TEXT_ARRAY,
    Vec<&str> => Type::TEXT_ARRAY,
    Option<String> => Type::TEXT,
    Option<&str> => Type::TEXT,
    Option<i64> => Type::INT8,
    Option<i32> => Type::INT4,
    crate::journal::JobStatus => Type::TEXT,
    crate::journal::Queue => Type::TEXT,
    crate::journal::RuleOutcome => Type::TEXT,
    Option<crate::journal::JobStatus> => Type::TEXT,
);

fn typed<'a>(params: &'a [&'a dyn Param]) -> Vec<(&'a (dyn ToSql + Sync), Type)> {
    params
        .iter()
        .map(|param| (*param as &(dyn ToSql + Sync), param.pg_type()))
        .collect()
}

/// `sql` as a statement prepared once per connection (the cache is the connection's),
/// with the parameters' types as given, and the parameters' values for it.
async fn prepared<'p>(
    client: &tokio_postgres::Client,
    cache: &deadpool_postgres::StatementCache,
    sql: &str,
    params: &'p [(&'p (dyn ToSql + Sync), Type)],
) -> PgResult<(tokio_postgres::Statement, Vec<&'p (dyn ToSql + Sync)>)> {
    let types: Vec<Type> = params.iter().map(|(_, ty)| ty.clone()).collect();
    let statement = cache.prepare_typed(client, sql, &types).await?;
    Ok((statement, params.iter().map(|(value, _)| *value).collect()))
}

async fn cached_rows(
    client: &tokio_postgres::Client,
    cache: &deadpool_postgres::StatementCache,
    sql: &str,
    params: &[(&(dyn ToSql + Sync), Type)],
) -> PgResult<Vec<Row>> {
    let (statement, values) = prepared(client, cache, sql, params).await?;
    client.query(&statement, &values).await
}

async fn cached_exec(
    client: &tokio_postgres::Client,
    cache: &deadpool_postgres::StatementCache,
    sql: &str,
    params: &[(&(dyn ToSql + Sync), Type)],
) -> PgResult<u64> {
    let (statement, values) = prepared(client, cache, sql, params).await?;
    client.execute(&statement, &values).await
}

async fn cached_one(
    client: &tokio_postgres::Client,
    cache: &deadpool_postgres::StatementCache,
    sql: &str,
    params: &[(&(dyn ToSql + Sync), Type)],
) -> PgResult<Row> {
    let (statement, values) = prepared(client, cache, sql, params).await?;
    client.query_one(&statement, &values).await
}

type PgResult<T> = Result<T, tokio_postgres::Error>;

/// Where a session sends the queues whose new work the other instances should hear of
/// (`listen::notifier`, which debounces them); without one (a CLI command, which exits
/// at once), `NOTIFY` goes inside the transaction.
pub(crate) type Notifier = tokio::sync::mpsc::UnboundedSender<crate::journal::Queue>;

/// `NOTIFY` of `queue`'s new work on `client`, delivered when the transaction commits.
async fn notify_now(client: &(impl Typed + ?Sized), queue: crate::journal::Queue) -> PgResult<()> {
    client
        .exec(
            "SELECT pg_notify($1, $2)",
            &[&super::schema::WORK_CHANNEL, &queue.as_str()],
        )
        .await
        .map(|_| ())
}

/// Statements with typed parameters, on a session or inside a transaction.
pub(crate) trait Typed: Sync {
    /// Tells the other instances that `queue` has new work, once it is committed.
    fn wake_others(
        &self,
        queue: crate::journal::Queue,
    ) -> impl Future<Output = PgResult<()>> + Send;

    fn rows(
        &self,
        sql: &str,
        params: &[&dyn Param],
    ) -> impl Future<Output = PgResult<Vec<Row>>> + Send;

    fn exec(&self, sql: &str, params: &[&dyn Param]) -> impl Future<Output = PgResult<u64>> + Send;

    fn row_opt(
        &self,
        sql: &str,
        params: &[&dyn Param],
    ) -> impl Future<Output = PgResult<Option<Row>>> + Send {
        async move {
            let mut rows = self.rows(sql, params).await?;
            Ok(if rows.is_empty() {
                None
            } else {
                Some(rows.swap_remove(0))
            })
        }
    }

    /// One row; PostgreSQL's own error when there is none.
    fn row(&self, sql: &str, params: &[&dyn Param]) -> impl Future<Output = PgResult<Row>> + Send {
        async move {
            let typed = typed(params);
            self.one(sql, &typed).await
        }
    }

    #[doc(hidden)]
    fn one(
        &self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> impl Future<Output = PgResult<Row>> + Send;
}

/// Marks a statement in flight: if the future running it is dropped before it ends (the
/// call timed out), the mark stays, and the session discards its connection.
struct InFlight<'a>(&'a AtomicBool);

impl<'a> InFlight<'a> {
    fn start(flag: &'a AtomicBool) -> InFlight<'a> {
        flag.store(true, Ordering::Release);
        InFlight(flag)
    }

    fn end<T>(self, result: T) -> T {
        self.0.store(false, Ordering::Release);
        result
    }
}

/// One pooled connection, for one call.
pub(crate) struct Session {
    object: Option<deadpool_postgres::Object>,
    notifier: Option<Notifier>,
    /// The session's settings as `SET LOCAL`s, behind a transaction pooler.
    pooled: Option<Arc<str>>,
    in_flight: Arc<AtomicBool>,
    tls: MakeRustlsConnect,
}

impl Session {
    pub(super) fn new(
        object: deadpool_postgres::Object,
        pooled: Option<Arc<str>>,
        tls: MakeRustlsConnect,
        notifier: Option<Notifier>,
    ) -> Session {
        Session {
            object: Some(object),
            notifier,
            pooled,
            in_flight: Arc::default(),
            tls,
        }
    }

    fn client(&self) -> &tokio_postgres::Client {
        self.object.as_ref().expect("set until dropped")
    }

    fn cache(&self) -> &deadpool_postgres::StatementCache {
        &self
            .object
            .as_ref()
            .expect("set until dropped")
            .statement_cache
    }

    /// Begins a transaction (with the settings, behind a pooler).
    pub(crate) async fn transaction(&mut self) -> PgResult<Tx<'_>> {
        let in_flight = Arc::clone(&self.in_flight);
        let pooled = self.pooled.clone();
        let object = self.object.as_mut().expect("set until dropped");
        let flight = InFlight::start(&in_flight);
        let tx = object.transaction().await;
        let tx = match (tx, pooled) {
            (Ok(tx), Some(settings)) => match tx.batch_execute(&settings).await {
                Ok(()) => Ok(tx),
                Err(error) => Err(error),
            },
            (tx, _) => tx,
        };
        let tx = flight.end(tx)?;
        Ok(Tx {
            tx,
            in_flight,
            cached: self.pooled.is_none(),
            notifier: self.notifier.clone(),
            owed: std::sync::Mutex::default(),
        })
    }

    /// Runs one statement: alone, or behind a pooler in a transaction of its own that
    /// carries the settings.
    async fn single<'s, T, Fut>(
        &'s self,
        run: impl FnOnce(&'s tokio_postgres::Client) -> Fut,
    ) -> PgResult<T>
    where
        Fut: Future<Output = PgResult<T>>,
    {
        let flight = InFlight::start(&self.in_flight);
        let client = self.client();
        let result = match &self.pooled {
            None => run(client).await,
            Some(settings) => match client.batch_execute(&format!("BEGIN; {settings}")).await {
                Err(error) => Err(error),
                Ok(()) => match run(client).await {
                    Ok(value) => client.batch_execute("COMMIT").await.map(|()| value),
                    Err(error) => {
                        let _ = client.batch_execute("ROLLBACK").await;
                        Err(error)
                    }
                },
            },
        };
        flight.end(result)
    }
}

impl Typed for Session {
    async fn wake_others(&self, queue: crate::journal::Queue) -> PgResult<()> {
        match &self.notifier {
            // A statement of its own has committed: tell them now.
            Some(notifier) => {
                let _ = notifier.send(queue);
                Ok(())
            }
            None => notify_now(self, queue).await,
        }
    }

    async fn rows(&self, sql: &str, params: &[&dyn Param]) -> PgResult<Vec<Row>> {
        let typed = typed(params);
        if self.pooled.is_some() {
            self.single(|client| client.query_typed(sql, &typed)).await
        } else {
            self.single(|client| cached_rows(client, self.cache(), sql, &typed))
                .await
        }
    }

    async fn exec(&self, sql: &str, params: &[&dyn Param]) -> PgResult<u64> {
        let typed = typed(params);
        if self.pooled.is_some() {
            self.single(|client| client.execute_typed(sql, &typed))
                .await
        } else {
            self.single(|client| cached_exec(client, self.cache(), sql, &typed))
                .await
        }
    }

    async fn one(&self, sql: &str, params: &[(&(dyn ToSql + Sync), Type)]) -> PgResult<Row> {
        if self.pooled.is_some() {
            self.single(move |client| client.query_typed_one(sql, params))
                .await
        } else {
            self.single(|client| cached_one(client, self.cache(), sql, params))
                .await
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if !self.in_flight.load(Ordering::Acquire) {
            return;
        }
        // A statement was cut off (its call timed out): the server may still be running
        // it, so cancel it, and never hand this connection back to the pool busy.
        if let Some(object) = self.object.take() {
            let cancel = object.cancel_token();
            let tls = self.tls.clone();
            drop(deadpool_postgres::Object::take(object));
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = cancel.cancel_query(tls).await;
                });
            }
            tracing::debug!("Discarded a PostgreSQL connection whose statement was cut off.");
        }
    }
}

/// A transaction on a [`Session`]. Dropped without `commit`, it rolls back.
pub(crate) struct Tx<'a> {
    tx: deadpool_postgres::Transaction<'a>,
    in_flight: Arc<AtomicBool>,
    /// Statements prepared once per connection (not behind a transaction pooler).
    cached: bool,
    notifier: Option<Notifier>,
    /// Queues to tell the other instances of once this transaction commits.
    owed: std::sync::Mutex<Vec<crate::journal::Queue>>,
}

impl Tx<'_> {
    pub(crate) async fn commit(self) -> PgResult<()> {
        let flight = InFlight::start(&self.in_flight);
        let result = self.tx.commit().await;
        let result = flight.end(result);
        if result.is_ok() {
            if let Some(notifier) = &self.notifier {
                let owed =
                    std::mem::take(&mut *self.owed.lock().unwrap_or_else(|p| p.into_inner()));
                for queue in owed {
                    let _ = notifier.send(queue);
                }
            }
        }
        result
    }

    pub(crate) async fn rollback(self) -> PgResult<()> {
        let flight = InFlight::start(&self.in_flight);
        let result = self.tx.rollback().await;
        flight.end(result)
    }

    pub(crate) async fn batch_execute(&self, sql: &str) -> PgResult<()> {
        let flight = InFlight::start(&self.in_flight);
        let result = self.tx.batch_execute(sql).await;
        flight.end(result)
    }
}

impl Typed for Tx<'_> {
    async fn wake_others(&self, queue: crate::journal::Queue) -> PgResult<()> {
        if self.notifier.is_some() {
            let mut owed = self.owed.lock().unwrap_or_else(|p| p.into_inner());
            if !owed.contains(&queue) {
                owed.push(queue);
            }
            return Ok(());
        }
        notify_now(self, queue).await
    }

    async fn rows(&self, sql: &str, params: &[&dyn Param]) -> PgResult<Vec<Row>> {
        let typed = typed(params);
        let flight = InFlight::start(&self.in_flight);
        let result = if self.cached {
            cached_rows(self.tx.client(), &self.tx.statement_cache, sql, &typed).await
        } else {
            self.tx.query_typed(sql, &typed).await
        };
        flight.end(result)
    }

    async fn exec(&self, sql: &str, params: &[&dyn Param]) -> PgResult<u64> {
        let typed = typed(params);
        let flight = InFlight::start(&self.in_flight);
        let result = if self.cached {
            cached_exec(self.tx.client(), &self.tx.statement_cache, sql, &typed).await
        } else {
            self.tx.execute_typed(sql, &typed).await
        };
        flight.end(result)
    }

    async fn one(&self, sql: &str, params: &[(&(dyn ToSql + Sync), Type)]) -> PgResult<Row> {
        let flight = InFlight::start(&self.in_flight);
        let result = if self.cached {
            cached_one(self.tx.client(), &self.tx.statement_cache, sql, params).await
        } else {
            self.tx.query_typed_one(sql, params).await
        };
        flight.end(result)
    }
}
