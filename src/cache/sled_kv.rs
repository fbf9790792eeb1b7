//! The sled engine for [`Metadata`](super::Metadata). All sled code lives in this
//! file, so replacing the engine (Garage left sled over disk growth and latency)
//! means writing one more [`Kv`] implementation and running the shared suite.

use std::path::Path;

use super::meta::{Kv, Tree};
use super::CacheError;

pub struct SledKv {
    db: sled::Db,
    trees: [sled::Tree; 6],
}

fn err(e: sled::Error) -> CacheError {
    CacheError::Meta(e.to_string())
}

impl SledKv {
    pub fn open(dir: &Path) -> Result<SledKv, CacheError> {
        let db = sled::Config::new()
            .path(dir)
            // Records are ~100 bytes: 100,000 blobs are ~10 MiB of pages, so
            // 16 MiB of cache holds a large cache's index and bounds RSS.
            .cache_capacity(16 * 1024 * 1024)
            .flush_every_ms(Some(500))
            .open()
            .map_err(|e| match e {
                // sled says so only in its message: one process per database.
                sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                    CacheError::Locked(dir.display().to_string())
                }
                e => err(e),
            })?;
        let open = |t: Tree| db.open_tree(t.name()).map_err(err);
        let trees = [
            open(Tree::Meta)?,
            open(Tree::Tags)?,
            open(Tree::Blobs)?,
            open(Tree::Links)?,
            open(Tree::Pins)?,
            open(Tree::Notes)?,
        ];
        Ok(SledKv { db, trees })
    }

    fn tree(&self, t: Tree) -> &sled::Tree {
        &self.trees[t as usize]
    }
}

impl Kv for SledKv {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, CacheError> {
        Ok(self.tree(tree).get(key).map_err(err)?.map(|v| v.to_vec()))
    }
    fn insert(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<(), CacheError> {
        self.tree(tree).insert(key, value).map_err(err)?;
        Ok(())
    }
    fn remove(&self, tree: Tree, key: &[u8]) -> Result<(), CacheError> {
        self.tree(tree).remove(key).map_err(err)?;
        Ok(())
    }
    fn len(&self, tree: Tree) -> Result<usize, CacheError> {
        Ok(self.tree(tree).len())
    }
    fn scan(
        &self,
        tree: Tree,
        prefix: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), CacheError> {
        for entry in self.tree(tree).scan_prefix(prefix) {
            let (k, v) = entry.map_err(err)?;
            if !f(&k, &v) {
                break;
            }
        }
        Ok(())
    }
    fn flush(&self) -> Result<(), CacheError> {
        self.db.flush().map_err(err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::meta::{tests::suite, Metadata};

    #[test]
    fn sled_engine_passes_the_suite_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        {
            let m = Metadata::new(Box::new(SledKv::open(dir.path()).unwrap())).unwrap();
            suite(&m);
            let d = crate::registry::Digest::sha256_of(b"x");
            let repo = "a/b".parse().unwrap();
            m.link("u", &repo, &d).unwrap();
            m.flush().unwrap();
        }
        let m = Metadata::new(Box::new(SledKv::open(dir.path()).unwrap())).unwrap();
        let d = crate::registry::Digest::sha256_of(b"x");
        assert!(m.is_linked("u", &"a/b".parse().unwrap(), &d).unwrap());
    }

    #[test]
    fn a_second_opener_is_told_the_cache_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let _first = SledKv::open(dir.path()).unwrap();
        match SledKv::open(dir.path()) {
            Err(CacheError::Locked(p)) => assert_eq!(p, dir.path().display().to_string()),
            Err(e) => panic!("not reported as locked: {e}"),
            Ok(_) => panic!("opened twice"),
        }
    }
}
