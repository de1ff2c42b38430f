//! Token usage, in the Batch object's terms: per line, and summed over a batch.

/// Token usage summed over a batch's lines, in the Batch object's terms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: i64,
    pub cached_tokens: i64,
    pub output_tokens: i64,
    pub reasoning_tokens: i64,
    pub total_tokens: i64,
}

impl Usage {
    /// Adds `other`, saturating at `i64::MAX`: a count that cannot grow any
    /// more is still a valid count, while a wrapped (or, in debug builds,
    /// panicking) one would poison the batch (audit M3).
    pub fn add(&mut self, other: &Usage) {
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.cached_tokens = self.cached_tokens.saturating_add(other.cached_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.reasoning_tokens = self.reasoning_tokens.saturating_add(other.reasoning_tokens);
        self.total_tokens = self.total_tokens.saturating_add(other.total_tokens);
    }
}

#[cfg(test)]
mod tests {
    use super::Usage;

    #[test]
    fn usage_sums_saturate_instead_of_wrapping() {
        let near_max = Usage {
            input_tokens: i64::MAX - 1,
            total_tokens: i64::MAX,
            ..Usage::default()
        };
        let mut sum = near_max;
        sum.add(&near_max);
        assert_eq!(sum.input_tokens, i64::MAX);
        assert_eq!(sum.total_tokens, i64::MAX);
        assert_eq!(sum.output_tokens, 0);
    }
}
