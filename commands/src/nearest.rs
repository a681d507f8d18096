//! The in-process nearest-driver index: a uniform grid of ~1.1 km cells
//! (0.01° × 0.01°) over which a k-nearest search expands ring by ring.
//!
//! Why a grid and not an R-tree: see `docs/adr/0003-nearest-driver-index.md`. In short,
//! drivers move every few seconds, so updates dominate; a grid moves a driver in O(1)
//! (a swap-remove from one cell's vector, a push onto another's) and keeps no
//! tree to rebalance, and a city's density is even enough that a 5-nearest search
//! touches a few hundred points.
//!
//! ## Search
//! Rings of cells around the query's cell are visited in order of Chebyshev distance
//! `r`. Every point in ring `r + 1` is at least `r` cell-heights/widths away, so once
//! `k` points are found whose worst distance is below that bound (or the bound passes
//! the radius), the search stops. Distances are haversine (`GeoPoint::distance_km`), the
//! same the domain uses, so the index agrees exactly with a brute-force scan (a
//! property test checks it).

use std::collections::HashMap;

use domain::geo::EARTH_RADIUS_KM;
use domain::{GeoPoint, UserId};

/// Cell size in degrees (~1.1 km north–south).
pub const CELL_DEG: f64 = 0.01;

type Cell = (i32, i32);

#[derive(Clone, Copy, Debug)]
struct Entry {
    id: UserId,
    point: GeoPoint,
}

/// A driver found by [`GridIndex::nearest`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Found {
    /// The driver.
    pub id: UserId,
    /// Where they are.
    pub point: GeoPoint,
    /// Haversine distance to the query point, km.
    pub distance_km: f64,
}

/// Points by id in a uniform grid.
#[derive(Debug, Default, Clone)]
pub struct GridIndex {
    cells: HashMap<Cell, Vec<Entry>>,
    /// Where each id is: its cell and its slot in that cell's vector.
    slots: HashMap<UserId, (Cell, usize)>,
}

fn cell_of(p: &GeoPoint) -> Cell {
    // Coordinates are validated, so these are far inside i32.
    (
        (p.lat() / CELL_DEG).floor() as i32,
        (p.lon() / CELL_DEG).floor() as i32,
    )
}

/// km per degree of latitude.
const KM_PER_DEG: f64 = EARTH_RADIUS_KM * std::f64::consts::PI / 180.0;

impl GridIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many points it holds.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Whether it holds `id`.
    pub fn contains(&self, id: UserId) -> bool {
        self.slots.contains_key(&id)
    }

    /// Where `id` is, if held.
    pub fn get(&self, id: UserId) -> Option<GeoPoint> {
        let (cell, slot) = self.slots.get(&id)?;
        self.cells.get(cell)?.get(*slot).map(|e| e.point)
    }

    /// Puts `id` at `point` (moving it if it was elsewhere).
    pub fn upsert(&mut self, id: UserId, point: GeoPoint) {
        let cell = cell_of(&point);
        if let Some(&(old, slot)) = self.slots.get(&id) {
            if old == cell {
                if let Some(e) = self.cells.get_mut(&old).and_then(|v| v.get_mut(slot)) {
                    e.point = point;
                }
                return;
            }
            self.remove(id);
        }
        let v = self.cells.entry(cell).or_default();
        v.push(Entry { id, point });
        self.slots.insert(id, (cell, v.len() - 1));
    }

    /// Removes `id`; returns whether it was held.
    pub fn remove(&mut self, id: UserId) -> bool {
        let Some((cell, slot)) = self.slots.remove(&id) else {
            return false;
        };
        if let Some(v) = self.cells.get_mut(&cell) {
            if slot < v.len() {
                v.swap_remove(slot);
                if let Some(moved) = v.get(slot) {
                    self.slots.insert(moved.id, (cell, slot));
                }
            }
            if v.is_empty() {
                self.cells.remove(&cell);
            }
        }
        true
    }

    /// Up to `k` points within `radius_km` of `from` that `keep` accepts, nearest first
    /// (ties by id, so the answer is deterministic).
    pub fn nearest(
        &self,
        from: &GeoPoint,
        radius_km: f64,
        k: usize,
        mut keep: impl FnMut(UserId) -> bool,
    ) -> Vec<Found> {
        let mut best: Vec<Found> = Vec::with_capacity(k + 1);
        if k == 0 || radius_km.is_nan() || radius_km < 0.0 || self.slots.is_empty() {
            return best;
        }
        let (ci, cj) = cell_of(from);
        // The narrowest a cell gets within the searched band: longitude degrees shrink
        // with latitude, so take the cosine at the band's pole-most edge.
        let band_deg = radius_km / KM_PER_DEG + CELL_DEG;
        let worst_lat = (from.lat().abs() + band_deg).min(89.9);
        let cell_km = CELL_DEG * KM_PER_DEG * worst_lat.to_radians().cos();
        // Rings far enough to cover the radius (and no more than the longitude span).
        let max_ring = ((radius_km / cell_km).ceil() as i64 + 1).min(36_000) as i32;
        let mut consider = |e: &Entry, best: &mut Vec<Found>| {
            let d = from.distance_km(&e.point);
            if d > radius_km {
                return;
            }
            let full = best.len() == k;
            if full {
                let last = best[k - 1];
                if (d, e.id) >= (last.distance_km, last.id) {
                    return;
                }
            }
            if !keep(e.id) {
                return;
            }
            let at = best.partition_point(|f| (f.distance_km, f.id) < (d, e.id));
            best.insert(
                at,
                Found {
                    id: e.id,
                    point: e.point,
                    distance_km: d,
                },
            );
            best.truncate(k);
        };
        for r in 0..=max_ring {
            if r == 0 {
                if let Some(v) = self.cells.get(&(ci, cj)) {
                    v.iter().for_each(|e| consider(e, &mut best));
                }
            } else {
                for dj in -r..=r {
                    for di in [-r, r] {
                        if let Some(v) = self.cells.get(&(ci + di, cj + dj)) {
                            v.iter().for_each(|e| consider(e, &mut best));
                        }
                    }
                }
                for di in (-r + 1)..r {
                    for dj in [-r, r] {
                        if let Some(v) = self.cells.get(&(ci + di, cj + dj)) {
                            v.iter().for_each(|e| consider(e, &mut best));
                        }
                    }
                }
            }
            // Anything in ring r + 1 is at least r whole cells away.
            let bound = f64::from(r) * cell_km;
            if bound > radius_km || (best.len() == k && best[k - 1].distance_km <= bound) {
                break;
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn id(n: u128) -> UserId {
        UserId::from_uuid(Uuid::from_u128(n))
    }

    fn p(lat: f64, lon: f64) -> GeoPoint {
        GeoPoint::new(lat, lon).unwrap()
    }

    #[test]
    fn moves_and_removes_keep_slots_consistent() {
        let mut g = GridIndex::new();
        for n in 0..10 {
            g.upsert(id(n), p(-6.2, 106.8 + n as f64 * 0.0001));
        }
        g.remove(id(0));
        g.upsert(id(5), p(-6.3, 106.9));
        g.upsert(id(6), p(-6.2, 106.8006));
        assert_eq!(g.len(), 9);
        for n in 1..10 {
            assert!(g.get(id(n)).is_some(), "{n}");
        }
        assert_eq!(g.get(id(5)), Some(p(-6.3, 106.9)));
        let found = g.nearest(&p(-6.2, 106.8), 1.0, 3, |_| true);
        assert_eq!(
            found.iter().map(|f| f.id).collect::<Vec<_>>(),
            vec![id(1), id(2), id(3)]
        );
    }

    #[test]
    fn respects_radius_and_filter() {
        let mut g = GridIndex::new();
        g.upsert(id(1), p(-6.2, 106.8));
        g.upsert(id(2), p(-6.2, 106.81));
        g.upsert(id(3), p(-6.2, 107.0));
        let found = g.nearest(&p(-6.2, 106.8), 5.0, 5, |d| d != id(1));
        assert_eq!(found.iter().map(|f| f.id).collect::<Vec<_>>(), vec![id(2)]);
    }

    fn brute_force(
        points: &[(UserId, GeoPoint)],
        from: &GeoPoint,
        radius_km: f64,
        k: usize,
        banned: &[UserId],
    ) -> Vec<UserId> {
        let mut all: Vec<(f64, UserId)> = points
            .iter()
            .filter(|(id, _)| !banned.contains(id))
            .map(|(id, p)| (from.distance_km(p), *id))
            .filter(|(d, _)| *d <= radius_km)
            .collect();
        all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        all.into_iter().take(k).map(|(_, id)| id).collect()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// The grid answers exactly what a scan of every point answers, after any mix of
        /// inserts, moves and removals, for any query, radius, k and filter.
        #[test]
        fn the_grid_agrees_with_brute_force(
            // A Jakarta-sized box, plus a few far-away points.
            raw in proptest::collection::vec((-6.45f64..-6.05, 106.65f64..107.05), 0..300),
            far in proptest::collection::vec((-11.0f64..6.0, 95.0f64..141.0), 0..10),
            moves in proptest::collection::vec((0usize..300, -6.45f64..-6.05, 106.65f64..107.05), 0..50),
            removals in proptest::collection::vec(0usize..300, 0..50),
            query in (-6.5f64..-6.0, 106.6f64..107.1),
            radius_km in 0.0f64..25.0,
            k in 0usize..8,
            ban_every in 2usize..7,
        ) {
            let mut g = GridIndex::new();
            let mut truth: Vec<(UserId, GeoPoint)> = Vec::new();
            for (n, (lat, lon)) in raw.iter().chain(far.iter()).enumerate() {
                let point = p(*lat, *lon);
                g.upsert(id(n as u128), point);
                truth.push((id(n as u128), point));
            }
            for (n, lat, lon) in moves {
                if let Some(entry) = truth.get_mut(n) {
                    entry.1 = p(lat, lon);
                    g.upsert(entry.0, entry.1);
                }
            }
            for n in removals {
                if n < truth.len() {
                    let (gone, _) = truth[n];
                    g.remove(gone);
                    truth.retain(|(i, _)| *i != gone);
                }
            }
            proptest::prop_assert_eq!(g.len(), truth.len());
            let banned: Vec<UserId> = truth.iter().step_by(ban_every).map(|(i, _)| *i).collect();
            let from = p(query.0, query.1);
            let found: Vec<UserId> = g
                .nearest(&from, radius_km, k, |i| !banned.contains(&i))
                .iter()
                .map(|f| f.id)
                .collect();
            proptest::prop_assert_eq!(found, brute_force(&truth, &from, radius_km, k, &banned));
        }
    }
}
