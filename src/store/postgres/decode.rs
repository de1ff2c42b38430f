//! Reading columns without panicking: every read goes through `try_get`, and
//! a bad value becomes an error naming the column (as in `store::sqlite`).

use sqlx::postgres::PgRow;
use sqlx::{Decode, Postgres, Row, Type};

use crate::error::{Error, Result};

/// The column's value, or an error naming the column.
pub(super) fn column<'r, T>(row: &'r PgRow, name: &str) -> Result<T>
where
    T: Decode<'r, Postgres> + Type<Postgres>,
{
    row.try_get(name)
        .map_err(|e| Error::internal(anyhow::anyhow!("undecodable column {name}: {e}")))
}
