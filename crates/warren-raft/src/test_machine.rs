//! A machine for the crate's own unit tests: its commands are numbers, and applying one does
//! nothing (the tests look at logs and transports, not at state).

use crate::Machine;
use std::io;

pub(crate) struct Nop;

impl Machine for Nop {
    type Command = u64;
    type Output = ();
    fn apply(&mut self, _: u64, _: &u64) {}
    fn snapshot(&self) -> Vec<u8> {
        Vec::new()
    }
    fn restore(&mut self, _: &[u8]) -> io::Result<()> {
        Ok(())
    }
    fn encode_command(command: &u64, out: &mut Vec<u8>) {
        out.extend_from_slice(&command.to_be_bytes());
    }
    fn decode_command(bytes: &[u8]) -> io::Result<u64> {
        let bytes: [u8; 8] = bytes.try_into().map_err(|_| io::ErrorKind::InvalidData)?;
        Ok(u64::from_be_bytes(bytes))
    }
}
