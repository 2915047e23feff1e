//! Decimal formatting into a byte buffer without `fmt` machinery: the
//! text protocols put a length on every message.

use bytes::BufMut;

/// Appends the decimal form of `value` to `out`.
pub fn push_decimal(out: &mut impl BufMut, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.put_slice(&digits[start..]);
}

/// How many decimal digits `value` has (1 for 0).
pub fn decimal_digits(mut value: u64) -> u64 {
    let mut digits = 1;
    while value >= 10 {
        value /= 10;
        digits += 1;
    }
    digits
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats() {
        for value in [0u64, 7, 10, 1_048_576, u64::MAX] {
            let mut out = Vec::new();
            super::push_decimal(&mut out, value);
            assert_eq!(out, value.to_string().into_bytes());
            assert_eq!(super::decimal_digits(value), out.len() as u64);
        }
    }
}
