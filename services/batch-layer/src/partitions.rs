//! The day partitions of `batch_hourly` and `batch_daily` (`migrations/0007`): one per
//! UTC day, `<table>_YYYYMMDD`, made by the run that first publishes the day.
//!
//! A day not stored yet is loaded the cheap way, all inside the run's transaction: a
//! table of its own without indexes receives the day's rows through `COPY`, then gets its
//! primary key (one sort, instead of a B-tree insertion per row) and a `CHECK` of the
//! partition's bounds, so that `ATTACH PARTITION` (which takes only `SHARE UPDATE
//! EXCLUSIVE` on the parent: readers go on) need not scan it. Until the commit nobody sees
//! the partition; after it, a reader whose snapshot is older sees the partition but none
//! of its rows, which were written by a transaction its snapshot does not include — one
//! run's results or the next's, never a mix. (`COPY … FREEZE` would break exactly that,
//! so it is not used.) A day already stored keeps its partition; its rows are deleted and
//! copied in place, into a primary key of one day's rows.

use std::collections::HashSet;

use chrono::NaiveDate;
use sqlx::PgConnection;

use crate::binary::BinaryRows;
use crate::store::copy_in;

/// One of the views partitioned by day.
#[derive(Debug, Clone, Copy)]
pub struct DayTable {
    /// The partitioned table.
    parent: &'static str,
    /// The partition key: `hour` (`TIMESTAMPTZ`) or `day` (`DATE`).
    bound: Bound,
    /// The primary key's columns.
    key: &'static str,
    /// The columns `COPY` sends, in the order of [`crate::rows`]' encoders.
    columns: &'static str,
}

#[derive(Debug, Clone, Copy)]
enum Bound {
    Hour,
    Day,
}

/// `batch_hourly`, partitioned on `hour`.
pub const HOURLY: DayTable = DayTable {
    parent: "batch_hourly",
    bound: Bound::Hour,
    key: "customer_id, hour",
    columns: "customer_id, hour, event_date, sum_minor, count, max_minor, distinct_vendors",
};

/// `batch_daily`, partitioned on `day`.
pub const DAILY: DayTable = DayTable {
    parent: "batch_daily",
    bound: Bound::Day,
    key: "customer_id, day",
    columns: "customer_id, day, sum_minor, count, max_minor, distinct_vendors, \
              peak_30m_sum_minor, peak_30m_count, peak_30m_end",
};

impl DayTable {
    /// The name of `date`'s partition.
    pub fn partition(&self, date: NaiveDate) -> String {
        format!("{}_{}", self.parent, date.format("%Y%m%d"))
    }

    /// The SQL condition selecting `date`'s rows, on the partition key (so that
    /// Postgres reads only that partition).
    pub fn rows_of(&self, date: NaiveDate) -> String {
        let (from, to) = self.bounds(date);
        let column = self.column();
        format!("{column} >= {from} AND {column} < {to}")
    }

    /// `COPY` into `table` (one of its partitions) of rows encoded by [`crate::rows`].
    pub fn copy_into(&self, table: &str) -> String {
        format!("COPY {table} ({}) FROM STDIN (FORMAT binary)", self.columns)
    }

    fn column(&self) -> &'static str {
        match self.bound {
            Bound::Hour => "hour",
            Bound::Day => "day",
        }
    }

    /// `date`'s partition bounds, as SQL literals: `[from, to)`.
    fn bounds(&self, date: NaiveDate) -> (String, String) {
        let next = date.succ_opt().expect("a day after a lake date");
        match self.bound {
            Bound::Hour => (
                format!("'{date} 00:00:00+00'"),
                format!("'{next} 00:00:00+00'"),
            ),
            Bound::Day => (format!("'{date}'"), format!("'{next}'")),
        }
    }

    /// The names of its partitions.
    pub async fn partitions(
        &self,
        connection: &mut PgConnection,
    ) -> anyhow::Result<HashSet<String>> {
        partitions_of(connection, self.parent).await
    }

    /// Makes `date`'s partition out of `data` (binary `COPY` rows of that day): a new
    /// table loaded, indexed and attached (see the module's header). The caller knows
    /// the partition does not exist. Returns the rows copied.
    pub async fn load_new(
        &self,
        connection: &mut PgConnection,
        date: NaiveDate,
        data: BinaryRows,
    ) -> anyhow::Result<u64> {
        let partition = self.partition(date);
        let (from, to) = self.bounds(date);
        let new = NewPartition::create(connection, self.parent, partition).await?;
        let rows = copy_in(connection, &self.copy_into(&new.name), data).await?;
        new.attach(
            connection,
            self.key,
            &self.rows_of(date),
            &format!("FROM ({from}) TO ({to})"),
        )
        .await?;
        Ok(rows)
    }
}

/// The names of `parent`'s partitions.
pub async fn partitions_of(
    connection: &mut PgConnection,
    parent: &str,
) -> anyhow::Result<HashSet<String>> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = $1::regclass",
    )
    .bind(parent)
    .fetch_all(connection)
    .await?;
    Ok(names.into_iter().collect())
}

/// A partition being made the cheap way (see the module's header): a table of its own,
/// filled by the caller, then indexed and attached.
pub struct NewPartition {
    parent: &'static str,
    pub name: String,
}

impl NewPartition {
    /// Creates `name`, shaped as `parent`, without indexes.
    pub async fn create(
        connection: &mut PgConnection,
        parent: &'static str,
        name: String,
    ) -> anyhow::Result<NewPartition> {
        execute(
            connection,
            format!("CREATE TABLE {name} (LIKE {parent} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"),
        )
        .await?;
        Ok(NewPartition { parent, name })
    }

    /// Gives the partition its primary key (`key`) and attaches it `FOR VALUES
    /// {values}`; `rows` is the partition's constraint as a condition, checked once here
    /// so that attaching need not scan the rows.
    pub async fn attach(
        self,
        connection: &mut PgConnection,
        key: &str,
        rows: &str,
        values: &str,
    ) -> anyhow::Result<()> {
        let NewPartition { parent, name } = self;
        execute(
            connection,
            format!(
                "ALTER TABLE {name} ADD PRIMARY KEY ({key}), \
                 ADD CONSTRAINT {name}_bounds CHECK ({rows})"
            ),
        )
        .await?;
        execute(
            connection,
            format!("ALTER TABLE {parent} ATTACH PARTITION {name} FOR VALUES {values}"),
        )
        .await?;
        // The partition's own bounds say the same from now on.
        execute(
            connection,
            format!("ALTER TABLE {name} DROP CONSTRAINT {name}_bounds"),
        )
        .await
    }
}

/// Runs a statement made of this module's table names, a date and literals of its own.
async fn execute(connection: &mut PgConnection, statement: String) -> anyhow::Result<()> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
        .execute(connection)
        .await?;
    Ok(())
}
