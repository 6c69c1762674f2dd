//! Transactions and tables that name themselves in every error.
//!
//! Each transaction is begun for one operation (`"commit"`, `"spool read"`,
//! …) and each table opened in it remembers its definition, so that a
//! failure reads `database error: commit: table spool: write 7: <redb's
//! reason>` without the call site spelling any of it out; decoding failures
//! are wrapped the same way ([`Table::corrupt`]). The redb error is kept as
//! the [`StoreError`]'s source.

use std::borrow::Borrow;
use std::fmt::{Debug, Display};
use std::ops::RangeBounds;

use redb::{
    AccessGuard, Database, Key, ReadableDatabase, ReadableTable, TableDefinition, TableError, Value,
};

use crate::{DecodeError, StoreError};

/// A write transaction begun for `op`.
pub(crate) struct WriteTxn {
    txn: redb::WriteTransaction,
    op: &'static str,
}

/// A read transaction begun for `op`: a committed snapshot that never waits
/// for the writer.
pub(crate) struct ReadTxn {
    txn: redb::ReadTransaction,
    op: &'static str,
}

/// A table opened in a transaction, as [`redb::Table`] (`T` =
/// `redb::Table<'txn, K, V>`) or [`redb::ReadOnlyTable`].
pub(crate) struct Table<K: Key + 'static, V: Value + 'static, T> {
    op: &'static str,
    def: TableDefinition<'static, K, V>,
    inner: T,
}

/// A table opened for writing.
pub(crate) type WriteTable<'txn, K, V> = Table<K, V, redb::Table<'txn, K, V>>;

/// A table opened for reading.
pub(crate) type ReadTable<K, V> = Table<K, V, redb::ReadOnlyTable<K, V>>;

/// A key-value pair read from a table.
pub(crate) type Entry<'a, K, V> = (AccessGuard<'a, K>, AccessGuard<'a, V>);

impl WriteTxn {
    pub(crate) fn begin(db: &Database, op: &'static str) -> Result<Self, StoreError> {
        let txn = db
            .begin_write()
            .map_err(|e| StoreError::db(format_args!("{op}: begin write"), e))?;
        Ok(WriteTxn { txn, op })
    }

    /// Commits without a sync: durable once a later transaction without
    /// this commits ([`Transaction::lazy`](crate::backend::Transaction)).
    pub(crate) fn lazy(&mut self) -> Result<(), StoreError> {
        let op = self.op;
        self.txn
            .set_durability(redb::Durability::None)
            .map_err(|e| StoreError::db(format_args!("{op}: set durability"), e))
    }

    /// Opens `def`, creating it if it does not exist.
    pub(crate) fn table<K: Key + 'static, V: Value + 'static>(
        &self,
        def: TableDefinition<'static, K, V>,
    ) -> Result<WriteTable<'_, K, V>, StoreError> {
        let inner = self
            .txn
            .open_table(def)
            .map_err(|e| StoreError::db(format_args!("{}: open table {def}", self.op), e))?;
        Ok(Table {
            op: self.op,
            def,
            inner,
        })
    }

    /// Deletes `def` whole; returns whether it existed.
    pub(crate) fn delete_table<K: Key + 'static, V: Value + 'static>(
        &self,
        def: TableDefinition<'static, K, V>,
    ) -> Result<bool, StoreError> {
        self.txn
            .delete_table(def)
            .map_err(|e| StoreError::db(format_args!("{}: delete table {def}", self.op), e))
    }

    /// Makes everything written durable (redb's default durability: on disk,
    /// fsynced, when this returns).
    pub(crate) fn commit(self) -> Result<(), StoreError> {
        let op = self.op;
        self.txn
            .commit()
            .map_err(|e| StoreError::db(format_args!("{op}: commit"), e))
    }

    /// Commits if `changed`, else aborts: a transaction that changed
    /// nothing costs no fsync.
    pub(crate) fn finish(self, changed: bool) -> Result<(), StoreError> {
        if changed {
            return self.commit();
        }
        let op = self.op;
        self.txn
            .abort()
            .map_err(|e| StoreError::db(format_args!("{op}: abort"), e))
    }
}

impl ReadTxn {
    pub(crate) fn begin(db: &Database, op: &'static str) -> Result<Self, StoreError> {
        let txn = db
            .begin_read()
            .map_err(|e| StoreError::db(format_args!("{op}: begin read"), e))?;
        Ok(ReadTxn { txn, op })
    }

    /// Opens `def`, which must exist (every table is created on open).
    pub(crate) fn table<K: Key + 'static, V: Value + 'static>(
        &self,
        def: TableDefinition<'static, K, V>,
    ) -> Result<ReadTable<K, V>, StoreError> {
        self.table_if_exists(def)?.ok_or_else(|| {
            StoreError::db(
                format_args!("{}: open table {def}", self.op),
                TableError::TableDoesNotExist(def.to_string()),
            )
        })
    }

    /// Opens `def`; `None` if it does not exist.
    pub(crate) fn table_if_exists<K: Key + 'static, V: Value + 'static>(
        &self,
        def: TableDefinition<'static, K, V>,
    ) -> Result<Option<ReadTable<K, V>>, StoreError> {
        match self.txn.open_table(def) {
            Ok(inner) => Ok(Some(Table {
                op: self.op,
                def,
                inner,
            })),
            Err(TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(StoreError::db(
                format_args!("{}: open table {def}", self.op),
                e,
            )),
        }
    }
}

impl<K: Key + 'static, V: Value + 'static, T> Table<K, V, T> {
    /// A redb error of this table, while doing `what`.
    fn error(&self, what: impl Display, e: impl Into<redb::Error>) -> StoreError {
        StoreError::db(
            format_args!("{}: table {}: {what}", self.op, self.def),
            e.into(),
        )
    }

    /// Bytes of this table that do not decode: `what` names the key.
    pub(crate) fn corrupt(&self, what: impl Display, e: DecodeError) -> StoreError {
        StoreError::corrupt(format_args!("table {}: {what}", self.def), e)
    }
}

impl<K, V, T> Table<K, V, T>
where
    K: Key + 'static,
    V: Value + 'static,
    T: ReadableTable<K, V>,
{
    pub(crate) fn get<'k>(
        &self,
        key: impl Borrow<K::SelfType<'k>>,
    ) -> Result<Option<AccessGuard<'_, V>>, StoreError>
    where
        K::SelfType<'k>: Debug,
    {
        let key = key.borrow();
        self.inner
            .get(key)
            .map_err(|e| self.error(format_args!("read {key:?}"), e))
    }

    pub(crate) fn last(&self) -> Result<Option<Entry<'_, K, V>>, StoreError> {
        self.inner.last().map_err(|e| self.error("last", e))
    }

    pub(crate) fn len(&self) -> Result<u64, StoreError> {
        self.inner.len().map_err(|e| self.error("count", e))
    }

    /// The entries in `range`, ascending (`.rev()` for descending).
    pub(crate) fn range<'a, KR>(
        &self,
        range: impl RangeBounds<KR> + 'a,
    ) -> Result<impl DoubleEndedIterator<Item = Result<Entry<'_, K, V>, StoreError>> + '_, StoreError>
    where
        KR: Borrow<K::SelfType<'a>> + 'a,
    {
        let iter = self
            .inner
            .range(range)
            .map_err(|e| self.error("range", e))?;
        Ok(iter.map(move |entry| entry.map_err(|e| self.error("range", e))))
    }

    /// Every entry, ascending by key.
    pub(crate) fn iter(
        &self,
    ) -> Result<impl DoubleEndedIterator<Item = Result<Entry<'_, K, V>, StoreError>> + '_, StoreError>
    {
        let iter = self.inner.iter().map_err(|e| self.error("iterate", e))?;
        Ok(iter.map(move |entry| entry.map_err(|e| self.error("iterate", e))))
    }
}

impl<'txn, K: Key + 'static, V: Value + 'static> WriteTable<'txn, K, V> {
    /// Inserts or replaces `key`'s value.
    pub(crate) fn insert<'k, 'v>(
        &mut self,
        key: impl Borrow<K::SelfType<'k>>,
        value: impl Borrow<V::SelfType<'v>>,
    ) -> Result<(), StoreError>
    where
        K::SelfType<'k>: Debug,
    {
        let key = key.borrow();
        let written = self.inner.insert(key, value).map(|_replaced| ());
        written.map_err(|e| self.error(format_args!("write {key:?}"), e))
    }

    /// Removes `key`; returns its value, if it was there.
    pub(crate) fn remove<'k>(
        &mut self,
        key: impl Borrow<K::SelfType<'k>>,
    ) -> Result<Option<AccessGuard<'_, V>>, StoreError>
    where
        K::SelfType<'k>: Debug,
    {
        let key = key.borrow();
        let (op, def) = (self.op, self.def);
        self.inner.remove(key).map_err(|e| {
            StoreError::db(
                format_args!("{op}: table {def}: remove {key:?}"),
                redb::Error::from(e),
            )
        })
    }

    /// Removes every entry in `range`; returns how many there were.
    pub(crate) fn remove_range<'a, KR>(
        &mut self,
        range: impl RangeBounds<KR> + Debug + 'a,
    ) -> Result<u64, StoreError>
    where
        KR: Borrow<K::SelfType<'a>> + 'a,
    {
        let what = format!("remove {range:?}");
        let mut removed = 0u64;
        let result = self.inner.retain_in(range, |_, _| {
            removed += 1;
            false
        });
        result.map_err(|e| self.error(what, e))?;
        Ok(removed)
    }
}
