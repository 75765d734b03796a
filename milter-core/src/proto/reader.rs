//! A cursor over a frame payload whose every read is checked.

use bytes::Bytes;

use crate::error::{Code, ProtocolError};

pub(crate) struct Reader {
    code: u8,
    data: Bytes,
}

impl Reader {
    pub(crate) fn new(code: u8, data: Bytes) -> Reader {
        Reader { code, data }
    }

    pub(crate) fn malformed(&self, reason: &'static str) -> ProtocolError {
        ProtocolError::Malformed {
            code: Code(self.code),
            reason,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, ProtocolError> {
        let b = *self.data.first().ok_or_else(|| self.malformed(what))?;
        self.data = self.data.slice(1..);
        Ok(b)
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, ProtocolError> {
        let b = self.bytes(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, ProtocolError> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn bytes(&mut self, n: usize, what: &'static str) -> Result<Bytes, ProtocolError> {
        if self.data.len() < n {
            return Err(self.malformed(what));
        }
        Ok(self.data.split_to(n))
    }

    /// A NUL-terminated string, without its NUL.
    pub(crate) fn cstr(&mut self, what: &'static str) -> Result<Bytes, ProtocolError> {
        let nul = self
            .data
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.malformed(what))?;
        let s = self.data.split_to(nul);
        self.data = self.data.slice(1..);
        Ok(s)
    }

    /// The rest of the payload as NUL-terminated strings (libmilter's argv).
    ///
    /// The count is bounded by the payload length: each string needs at least its NUL.
    pub(crate) fn argv(&mut self, what: &'static str) -> Result<Vec<Bytes>, ProtocolError> {
        let mut out = Vec::new();
        while !self.data.is_empty() {
            out.push(self.cstr(what)?);
        }
        Ok(out)
    }

    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.data)
    }

    pub(crate) fn finish(&self, what: &'static str) -> Result<(), ProtocolError> {
        if self.data.is_empty() {
            Ok(())
        } else {
            Err(self.malformed(what))
        }
    }
}
