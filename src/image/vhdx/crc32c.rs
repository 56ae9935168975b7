//! CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum MS-VHDX puts on its
//! headers, region tables and log entries (MS-VHDX 2.2.2). A 1 KiB table built at compile
//! time; only metadata (a few hundred KiB per image) is ever checksummed, so a byte-wise
//! loop is plenty and no dependency is needed.

const POLY: u32 = 0x82F6_3B78;

const TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    update(!0, data) ^ !0
}

/// CRC-32C of `data` with the 4-byte checksum field at `field` taken as zero, as MS-VHDX
/// computes it ("the checksum field is set to zero while the checksum is computed").
pub fn crc32c_with_zeroed_field(data: &[u8], field: usize) -> u32 {
    let end = (field + 4).min(data.len());
    let start = field.min(data.len());
    let c = update(!0, &data[..start]);
    let c = update(c, &[0u8; 4][..end - start]);
    update(c, &data[end..]) ^ !0
}

fn update(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc = TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 3720, appendix B.4 "CRC Examples": 32 bytes of each pattern.
    #[test]
    fn rfc3720_test_vectors() {
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62A8_AB43);
        let inc: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c(&inc), 0x46DD_794E);
        let dec: Vec<u8> = (0u8..32).rev().collect();
        assert_eq!(crc32c(&dec), 0x113F_DB5C);
        // The common check value for "123456789".
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn zeroed_field_equals_crc_of_the_zeroed_copy() {
        let mut data: Vec<u8> = (0..200u16).map(|i| (i * 7) as u8).collect();
        let got = crc32c_with_zeroed_field(&data, 4);
        data[4..8].fill(0);
        assert_eq!(got, crc32c(&data));
    }
}
