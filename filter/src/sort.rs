//! One sort for the whole module: each `slice::sort*` instance costs the .wasm 2–4 KB, while
//! this heapsort's body exists once (each caller only adds a small compare-and-swap closure).

enum Step {
    /// Whether the element at the first index orders before the one at the second.
    Less(usize, usize),
    Swap(usize, usize),
}

/// Sorts `v` ascending by `less` (a strict order). Not stable; O(n log n) whatever the input.
pub fn sort_unstable_by<T>(v: &mut [T], less: impl Fn(&T, &T) -> bool) {
    let len = v.len();
    heapsort(len, &mut |step| match step {
        Step::Less(a, b) => matches!((v.get(a), v.get(b)), (Some(x), Some(y)) if less(x, y)),
        Step::Swap(a, b) => {
            v.swap(a, b);
            false
        }
    });
}

/// Sorts `v` ascending.
pub fn sort_unstable<T: Ord>(v: &mut [T]) {
    sort_unstable_by(v, |a, b| a < b);
}

#[inline(never)]
fn heapsort(len: usize, op: &mut dyn FnMut(Step) -> bool) {
    // The first len/2 steps build a max-heap; each later one moves the maximum behind the heap.
    for i in (0..len + len / 2).rev() {
        let (mut node, end) = if i >= len {
            (i - len, len)
        } else {
            op(Step::Swap(0, i));
            (0, i)
        };
        loop {
            let mut child = 2 * node + 1;
            if child >= end {
                break;
            }
            if child + 1 < end && op(Step::Less(child, child + 1)) {
                child += 1;
            }
            if !op(Step::Less(node, child)) {
                break;
            }
            op(Step::Swap(node, child));
            node = child;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_like_the_standard_library() {
        let mut seed = 7u32;
        for len in 0..70 {
            let mut v: Vec<u32> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    (seed >> 16) % 13
                })
                .collect();
            let mut expected = v.clone();
            expected.sort();
            sort_unstable(&mut v);
            assert_eq!(v, expected, "length {len}");
        }
    }

    #[test]
    fn sorts_by_a_key() {
        let mut v = vec![(3, "c"), (1, "a"), (2, "b")];
        sort_unstable_by(&mut v, |a, b| a.0 < b.0);
        assert_eq!(v, [(1, "a"), (2, "b"), (3, "c")]);
    }
}
