//! Deterministic inputs for the benchmarks of every crate; not part of the API.

/// xorshift64: tiny, deterministic, good enough for benchmark inputs, so runs
/// are comparable. The seed must not be 0.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Approximately standard normal (Irwin–Hall: sum of 12 uniforms minus 6).
    pub fn normal(&mut self) -> f64 {
        (0..12).map(|_| self.unit()).sum::<f64>() - 6.0
    }

    /// Log-normal latency in milliseconds: median 40 ms, sigma 1 (p99 ~ 400 ms).
    pub fn latency_ms(&mut self) -> f64 {
        (40f64.ln() + self.normal()).exp()
    }
}
