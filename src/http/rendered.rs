//! Hot JSON answers kept rendered between requests (`tasks/last`), with exact invalidation:
//! each is tagged with the store's data generation ([`crate::store::writer::Generation`],
//! moved by every commit before the commit is answered) read BEFORE the store read it was
//! rendered from, and served only while the generation has not moved. So a change answered
//! 2xx shows in the very next request, and a busy store simply renders every time. Only
//! answers that depend on nothing but stored data (and the route's parameters) belong here;
//! the caller's access is checked before, as for any request.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;

use super::error::ApiError;
use crate::model::ProjectId;

/// Most answers kept; when full, all go (they are cheap to render again).
const MAX_ENTRIES: usize = 1024;

/// What a kept answer is for: the project, the template filter and the limit of a task list.
pub type PageKey = (ProjectId, Option<u64>, usize);

/// Rendered task lists, by [`PageKey`].
#[derive(Debug, Default)]
pub struct Rendered {
    pages: Mutex<HashMap<PageKey, (u64, Bytes)>>,
}

impl Rendered {
    /// The answer for `key` rendered at `generation` (read by the caller before `render`
    /// reads the store), rendering and keeping it when there is none.
    ///
    /// # Errors
    /// `render`'s.
    pub fn page(
        &self,
        key: PageKey,
        generation: u64,
        render: impl FnOnce() -> Result<Bytes, ApiError>,
    ) -> Result<Bytes, ApiError> {
        let lock = || {
            self.pages
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if let Some((g, bytes)) = lock().get(&key)
            && *g == generation
        {
            return Ok(bytes.clone());
        }
        let bytes = render()?;
        let mut pages = lock();
        if pages.len() >= MAX_ENTRIES {
            pages.clear();
        }
        match pages.get(&key) {
            Some((g, _)) if *g > generation => {}
            _ => {
                pages.insert(key, (generation, bytes.clone()));
            }
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_only_at_its_generation() {
        let r = Rendered::default();
        let key = (1, None, 200);
        let a = r.page(key, 1, || Ok(Bytes::from_static(b"a"))).unwrap();
        assert_eq!(&a[..], b"a");
        let kept = r.page(key, 1, || panic!("rendered again")).unwrap();
        assert_eq!(&kept[..], b"a");
        let b = r.page(key, 2, || Ok(Bytes::from_static(b"b"))).unwrap();
        assert_eq!(&b[..], b"b");
        // An older render never replaces a newer one.
        r.page(key, 1, || Ok(Bytes::from_static(b"old"))).unwrap();
        assert_eq!(
            &r.page(key, 2, || panic!("rendered again")).unwrap()[..],
            b"b"
        );
    }
}
