//! The subset of MessagePack the customer record uses, read and written as msgspec does.
//!
//! msgspec writes every integer in its smallest form, every float as float64, and
//! strings, binaries, arrays and maps with the shortest length prefix; writing the same
//! way keeps a record the kernel wrote byte-identical to one `scoring.state` wrote.

/// Why a record could not be read: a fixed text, so that the hot path returns no allocation.
pub type Result<T> = std::result::Result<T, &'static str>;

pub struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    #[inline]
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, position: 0 }
    }

    #[inline]
    pub fn at_end(&self) -> bool {
        self.position == self.bytes.len()
    }

    #[inline]
    fn take(&mut self, count: usize) -> Result<&'a [u8]> {
        let end = self.position.checked_add(count).ok_or("length overflow")?;
        if end > self.bytes.len() {
            return Err("record ends early");
        }
        let taken = &self.bytes[self.position..end];
        self.position = end;
        Ok(taken)
    }

    #[inline]
    fn byte(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    #[inline]
    fn peek(&self) -> Result<u8> {
        self.bytes.get(self.position).copied().ok_or("record ends early")
    }

    #[inline]
    fn be(&mut self, count: usize) -> Result<u64> {
        Ok(self.take(count)?.iter().fold(0u64, |value, byte| (value << 8) | u64::from(*byte)))
    }

    /// True (and consumed) when the next value is nil.
    #[inline]
    pub fn nil(&mut self) -> Result<bool> {
        if self.peek()? == 0xc0 {
            self.position += 1;
            return Ok(true);
        }
        Ok(false)
    }

    #[inline]
    pub fn int(&mut self) -> Result<i64> {
        let marker = self.byte()?;
        Ok(match marker {
            0x00..=0x7f => i64::from(marker),
            0xe0..=0xff => i64::from(marker as i8),
            0xcc => self.be(1)? as i64,
            0xcd => self.be(2)? as i64,
            0xce => self.be(4)? as i64,
            0xcf => i64::try_from(self.be(8)?).map_err(|_| "integer out of range")?,
            0xd0 => i64::from(self.be(1)? as u8 as i8),
            0xd1 => i64::from(self.be(2)? as u16 as i16),
            0xd2 => i64::from(self.be(4)? as u32 as i32),
            0xd3 => self.be(8)? as i64,
            _ => return Err("expected an integer"),
        })
    }

    /// A float field; msgspec also accepts an integer there (written by pure-Python code).
    #[inline]
    pub fn float(&mut self) -> Result<f64> {
        match self.peek()? {
            0xcb => {
                self.position += 1;
                Ok(f64::from_bits(self.be(8)?))
            }
            0xca => {
                self.position += 1;
                Ok(f64::from(f32::from_bits(self.be(4)? as u32)))
            }
            _ => Ok(self.int()? as f64),
        }
    }

    #[inline]
    pub fn boolean(&mut self) -> Result<bool> {
        match self.byte()? {
            0xc2 => Ok(false),
            0xc3 => Ok(true),
            _ => Err("expected a boolean"),
        }
    }

    #[inline]
    pub fn string(&mut self) -> Result<String> {
        let marker = self.byte()?;
        let length = match marker {
            0xa0..=0xbf => usize::from(marker & 0x1f),
            0xd9 => self.be(1)? as usize,
            0xda => self.be(2)? as usize,
            0xdb => self.be(4)? as usize,
            _ => return Err("expected a string"),
        };
        let raw = self.take(length)?;
        std::str::from_utf8(raw).map(str::to_owned).map_err(|_| "a string is not UTF-8")
    }

    #[inline]
    pub fn binary(&mut self) -> Result<Vec<u8>> {
        let marker = self.byte()?;
        let length = match marker {
            0xc4 => self.be(1)? as usize,
            0xc5 => self.be(2)? as usize,
            0xc6 => self.be(4)? as usize,
            _ => return Err("expected binary"),
        };
        Ok(self.take(length)?.to_vec())
    }

    #[inline]
    pub fn array(&mut self) -> Result<usize> {
        let marker = self.byte()?;
        Ok(match marker {
            0x90..=0x9f => usize::from(marker & 0x0f),
            0xdc => self.be(2)? as usize,
            0xdd => self.be(4)? as usize,
            _ => return Err("expected an array"),
        })
    }

    #[inline]
    pub fn map(&mut self) -> Result<usize> {
        let marker = self.byte()?;
        Ok(match marker {
            0x80..=0x8f => usize::from(marker & 0x0f),
            0xde => self.be(2)? as usize,
            0xdf => self.be(4)? as usize,
            _ => return Err("expected a map"),
        })
    }
}

#[derive(Default)]
pub struct Writer {
    pub bytes: Vec<u8>,
}

impl Writer {
    #[inline]
    pub fn with_capacity(capacity: usize) -> Self {
        Writer { bytes: Vec::with_capacity(capacity) }
    }

    #[inline]
    pub fn nil(&mut self) {
        self.bytes.push(0xc0);
    }

    #[inline]
    pub fn boolean(&mut self, value: bool) {
        self.bytes.push(if value { 0xc3 } else { 0xc2 });
    }

    #[inline]
    pub fn int(&mut self, value: i64) {
        let bytes = &mut self.bytes;
        if value >= 0 {
            if value < 128 {
                bytes.push(value as u8);
            } else if value < 1 << 8 {
                bytes.extend_from_slice(&[0xcc, value as u8]);
            } else if value < 1 << 16 {
                bytes.push(0xcd);
                bytes.extend_from_slice(&(value as u16).to_be_bytes());
            } else if value < 1 << 32 {
                bytes.push(0xce);
                bytes.extend_from_slice(&(value as u32).to_be_bytes());
            } else {
                bytes.push(0xcf);
                bytes.extend_from_slice(&(value as u64).to_be_bytes());
            }
        } else if value >= -32 {
            bytes.push(value as i8 as u8);
        } else if value >= -(1 << 7) {
            bytes.extend_from_slice(&[0xd0, value as i8 as u8]);
        } else if value >= -(1 << 15) {
            bytes.push(0xd1);
            bytes.extend_from_slice(&(value as i16).to_be_bytes());
        } else if value >= -(1 << 31) {
            bytes.push(0xd2);
            bytes.extend_from_slice(&(value as i32).to_be_bytes());
        } else {
            bytes.push(0xd3);
            bytes.extend_from_slice(&value.to_be_bytes());
        }
    }

    #[inline]
    pub fn float(&mut self, value: f64) {
        self.bytes.push(0xcb);
        self.bytes.extend_from_slice(&value.to_bits().to_be_bytes());
    }

    #[inline]
    fn length(&mut self, length: usize, fix: u8, fix_limit: usize, short: u8, markers: [u8; 2]) {
        if length < fix_limit {
            self.bytes.push(fix | length as u8);
        } else if short != 0 && length < 1 << 8 {
            self.bytes.extend_from_slice(&[short, length as u8]);
        } else if length < 1 << 16 {
            self.bytes.push(markers[0]);
            self.bytes.extend_from_slice(&(length as u16).to_be_bytes());
        } else {
            self.bytes.push(markers[1]);
            self.bytes.extend_from_slice(&(length as u32).to_be_bytes());
        }
    }

    #[inline]
    pub fn string(&mut self, value: &str) {
        self.length(value.len(), 0xa0, 32, 0xd9, [0xda, 0xdb]);
        self.bytes.extend_from_slice(value.as_bytes());
    }

    #[inline]
    pub fn binary(&mut self, value: &[u8]) {
        if value.len() < 1 << 8 {
            self.bytes.extend_from_slice(&[0xc4, value.len() as u8]);
        } else if value.len() < 1 << 16 {
            self.bytes.push(0xc5);
            self.bytes.extend_from_slice(&(value.len() as u16).to_be_bytes());
        } else {
            self.bytes.push(0xc6);
            self.bytes.extend_from_slice(&(value.len() as u32).to_be_bytes());
        }
        self.bytes.extend_from_slice(value);
    }

    #[inline]
    pub fn array(&mut self, length: usize) {
        self.length(length, 0x90, 16, 0, [0xdc, 0xdd]);
    }

    #[inline]
    pub fn map(&mut self, length: usize) {
        self.length(length, 0x80, 16, 0, [0xde, 0xdf]);
    }
}
