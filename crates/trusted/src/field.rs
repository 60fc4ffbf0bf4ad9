//! Arithmetic modulo the Mersenne prime p = 2^61 − 1, for the Freivalds checks of the
//! exact layers. A prime field has no zero divisors: over Z/2^64 an error of 2^63 in one
//! entry would pass a random check with probability 1/2.
pub const P: u64 = (1 << 61) - 1;

/// x mod p for any x (2^61 ≡ 1 mod p, so the 61-bit digits of x just add up).
#[inline(always)]
pub fn reduce(x: u128) -> u64 {
    let p = P as u128;
    let x = (x & p) + (x >> 61); // < 2^61 + 2^67
    let x = (x & p) + (x >> 61); // < 2^61 + 2^7
    let s = x as u64;
    let s = (s & P) + (s >> 61);
    if s >= P {
        s - P
    } else {
        s
    }
}

#[inline(always)]
pub fn add(a: u64, b: u64) -> u64 {
    let s = a + b;
    if s >= P {
        s - P
    } else {
        s
    }
}

#[inline(always)]
pub fn sub(a: u64, b: u64) -> u64 {
    if a >= b {
        a - b
    } else {
        a + P - b
    }
}

#[inline(always)]
pub fn mul(a: u64, b: u64) -> u64 {
    reduce(a as u128 * b as u128)
}

/// A signed integer with |v| < 2^61 as a field element.
#[inline(always)]
pub fn from_i64(v: i64) -> u64 {
    if v >= 0 {
        v as u64
    } else {
        (P as i64 + v) as u64
    }
}

/// Σ aᵢ·bᵢ mod p for reduced aᵢ, bᵢ: products are summed exactly in u128, 32 at a time
/// (each < 2^122), then folded.
#[derive(Default, Clone, Copy)]
pub struct Dot {
    acc: u128,
    n: u32,
    folded: u64,
}

impl Dot {
    #[inline(always)]
    pub fn add(&mut self, a: u64, b: u64) {
        self.acc += a as u128 * b as u128;
        self.n += 1;
        if self.n == 32 {
            self.folded = add(self.folded, reduce(self.acc));
            self.acc = 0;
            self.n = 0;
        }
    }

    pub fn value(&self) -> u64 {
        add(self.folded, reduce(self.acc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_ops_match_u128_arithmetic() {
        let vals = [
            0u64,
            1,
            2,
            P - 1,
            P - 2,
            1 << 60,
            123_456_789_012_345,
            (1 << 61) - 3,
        ];
        for &a in &vals {
            for &b in &vals {
                let a = a % P;
                let b = b % P;
                assert_eq!(mul(a, b) as u128, (a as u128 * b as u128) % P as u128);
                assert_eq!(add(a, b) as u128, (a as u128 + b as u128) % P as u128);
                assert_eq!((sub(a, b) as u128 + b as u128) % P as u128, a as u128);
            }
        }
        assert_eq!(from_i64(-1), P - 1);
        assert_eq!(from_i64(5), 5);
        let mut d = Dot::default();
        let mut want = 0u128;
        for i in 0..1000u64 {
            let (a, b) = (
                (i * 0x9e3779b97f4a7c15) % P,
                (i * 0x2545f4914f6cdd1d + 7) % P,
            );
            d.add(a, b);
            want = (want + a as u128 * b as u128) % P as u128;
        }
        assert_eq!(d.value() as u128, want);
        assert_eq!(reduce(u128::from(P)), 0);
        for x in [(1u128 << 122) - 1, u128::MAX, u128::MAX - 5, 1u128 << 127] {
            assert_eq!(reduce(x) as u128, x % P as u128);
        }
    }
}
