//! Reading columns without panicking. `Row::get` panics on a value it cannot
//! decode, and a panic while reading one row took down whichever task read
//! it (the supervisor's scan, for one; audit M3). Every read goes through
//! `try_get`, and a bad value becomes an error naming the column.

use sqlx::sqlite::SqliteRow;
use sqlx::{Decode, Row, Sqlite, Type};

use crate::error::{Error, Result};

/// The column's value, or an error naming the column.
pub(super) fn column<'r, T>(row: &'r SqliteRow, name: &str) -> Result<T>
where
    T: Decode<'r, Sqlite> + Type<Sqlite>,
{
    row.try_get(name)
        .map_err(|e| Error::internal(anyhow::anyhow!("undecodable column {name}: {e}")))
}

/// A counter column. SQLite silently turns an integer addition that
/// overflows into a REAL; databases written before the counters saturated
/// may hold one, so a REAL is read back as the nearest integer (saturating)
/// rather than refused.
pub(super) fn counter(row: &SqliteRow, name: &str) -> Result<Option<i64>> {
    match row.try_get::<Option<i64>, _>(name) {
        Ok(value) => Ok(value),
        Err(_) => column::<Option<f64>>(row, name).map(|real| real.map(|r| r as i64)),
    }
}
