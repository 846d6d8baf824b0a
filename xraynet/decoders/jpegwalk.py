"""The Numba kernel of :mod:`xraynet.decoders.jpegscan`: one scan's Huffman codes walked
block by block (ITU-T T.81 F.2.2.1-F.2.2.3, G.1.2), nothing dequantised or transformed.
A module of its own so that importing the decoders does not import Numba."""
from __future__ import annotations

import numpy as np
from numba import njit

from .jpegscan import (_AC_FIRST, _AC_REFINE, _BAD_CODE, _DC_FIRST, _DC_REFINE, _LOOKAHEAD, _LOSSLESS,
                       _NO_RESTART, _OK, _SEQ, _SHORT)

__all__ = ["walk_scan"]


@njit(cache=True, nogil=True)
def walk_scan(seg, n_mcus, dc_tables, ac_tables, restart, mode, ss, se, nz, maxcode, valptr, mincode, huffval,
              lookup):
    """Walk one scan's entropy-coded data ``seg`` (uint8, from the byte after the SOS header)
    for ``n_mcus`` MCUs of the blocks whose DC and AC table rows are ``dc_tables`` and
    ``ac_tables`` (one entry per block of an MCU). ``mode``: _SEQ, _DC_FIRST, _DC_REFINE,
    _AC_FIRST, _AC_REFINE or _LOSSLESS (then a "block" is one sample, coded as a DC
    difference is, T.81 H.1.2.2); ``ss``, ``se``: the spectral band; ``nz``: for AC scans (one
    block per MCU), a uint64 per block of the coefficients (zig-zag index) already nonzero,
    updated here. The tables are :class:`~xraynet.decoders.jpegscan._Tables`' arrays.
    Returns (outcome, MCUs complete, byte position reached, bits read ahead of it and not
    used: the refills stop at a marker, so after the last MCU these are the padding of the
    last byte and any data the scan holds beyond its MCUs)."""
    # The bit reader is four scalars -- byte position, bit buffer (at most 56 bits), bits in
    # it, 1 once a marker or the end of the data stops the refills -- passed through the
    # inner functions below and returned by them. Inner functions, because Numba takes a
    # reference to every array passed to a function, even an inlined one, and that
    # reference counting made the walk five times slower; these read the arrays as closure
    # variables instead.
    size = seg.size

    def refill(pos, acc, nbits, stopped):
        # Top the buffer up to more than 48 bits, unstuffing FF 00, until a marker (or the
        # end of the data) stops it: the position then stays on the marker's FF.
        while nbits <= 48 and stopped == 0:
            if pos >= size:
                stopped = 1
                break
            b = np.int64(seg[pos])
            if b == 0xFF:
                if pos + 1 >= size or seg[pos + 1] != 0:
                    stopped = 1
                    break
                pos += 2
            else:
                pos += 1
            acc = (acc << 8) | b
            nbits += 8
        return pos, acc, nbits, stopped

    def bits(pos, acc, nbits, stopped, n):
        # The next n (0-16) bits as a number, or -1 where the data stops first.
        if nbits < n:
            pos, acc, nbits, stopped = refill(pos, acc, nbits, stopped)
            if nbits < n:
                return -1, pos, acc, nbits, stopped
        nbits -= n
        v = (acc >> nbits) & ((1 << n) - 1)
        return v, pos, acc & ((1 << nbits) - 1), nbits, stopped

    def symbol(pos, acc, nbits, stopped, t):
        # A value Huffman-coded with table row t (T.81 F.2.2.3 DECODE) and the value & 15
        # magnitude bits after it (a DC difference's, an AC coefficient's, or in a refinement
        # scan its sign; F.1.2.1-F.1.2.2, G.1.2.3), taken together: the value, -1 where the
        # data stops, -2 for a code not in the table.
        if nbits < 32:
            pos, acc, nbits, stopped = refill(pos, acc, nbits, stopped)
        if nbits >= _LOOKAHEAD:
            peek = (acc >> (nbits - _LOOKAHEAD)) & ((1 << _LOOKAHEAD) - 1)
        else:
            peek = (acc << (_LOOKAHEAD - nbits)) & ((1 << _LOOKAHEAD) - 1)
        entry = np.int64(lookup[t, peek])
        if entry <= 0:  # a code longer than the lookahead: search the lengths (F.2.2.3)
            length = _LOOKAHEAD + 1
            while True:
                if nbits >= length:
                    code = (acc >> (nbits - length)) & ((1 << length) - 1)
                else:
                    code = (acc << (length - nbits)) & ((1 << length) - 1)
                if code <= maxcode[t, length]:
                    break
                length += 1
                if length > 16:
                    return -2, pos, acc, nbits, stopped
            entry = np.int64(huffval[t, valptr[t, length] + code - mincode[t, length]]) | (length << 8)
        take = (entry >> 8) & 0xFF
        if take > nbits:
            return -1, pos, acc, nbits, stopped
        nbits -= take
        value = entry & 0xFF
        if not entry >> 16:  # the magnitude bits did not fit the lookahead
            if (value & 15) > nbits:
                return -1, pos, acc, nbits, stopped
            nbits -= value & 15
        return value, pos, acc & ((1 << nbits) - 1), nbits, stopped

    def end_of_band_run(pos, acc, nbits, stopped, run):
        # EOBn (T.81 G.1.2.2, Table G.1): 2^run blocks end their band here, plus run bits
        # more; -1 where the data stops first.
        if run == 0:
            return 1, pos, acc, nbits, stopped
        v, pos, acc, nbits, stopped = bits(pos, acc, nbits, stopped, run)
        return (-1 if v < 0 else (1 << run) + v), pos, acc, nbits, stopped

    pos = np.int64(0)
    acc = np.int64(0)
    nbits = np.int64(0)
    stopped = np.int64(0)
    eobrun = 0
    one = np.uint64(1)
    for mcu in range(n_mcus):
        if restart > 0 and mcu > 0 and mcu % restart == 0:
            # T.81 F.1.2.3 / E.1.4: byte-aligned RSTn after every `restart` MCUs; the refills
            # stopped on it, and the bits left are the padding of the last byte.
            p = pos
            while p + 1 < size and seg[p] == 0xFF and seg[p + 1] == 0xFF:
                p += 1  # fill bytes before a marker
            if p + 1 >= size or seg[p] != 0xFF or seg[p + 1] == 0:
                return (_SHORT if p + 1 >= size else _NO_RESTART), mcu, p, nbits
            if not 0xD0 <= seg[p + 1] <= 0xD7:
                return _SHORT, mcu, p, nbits
            pos, acc, nbits, stopped = p + 2, np.int64(0), np.int64(0), np.int64(0)
            eobrun = 0
        for j in range(dc_tables.size):
            if mode == _SEQ or mode == _DC_FIRST or mode == _LOSSLESS:
                s, pos, acc, nbits, stopped = symbol(pos, acc, nbits, stopped, dc_tables[j])
                if s < 0:
                    return (_SHORT if s == -1 else _BAD_CODE), mcu, pos, nbits
                if s > (16 if mode == _LOSSLESS else 15):  # category 16 (no extra bits) is lossless only
                    return _BAD_CODE, mcu, pos, nbits
            elif mode == _DC_REFINE:
                v, pos, acc, nbits, stopped = bits(pos, acc, nbits, stopped, 1)
                if v < 0:
                    return _SHORT, mcu, pos, nbits
            if mode == _SEQ:
                k = 1
                while k < 64:
                    rs, pos, acc, nbits, stopped = symbol(pos, acc, nbits, stopped, ac_tables[j])
                    if rs < 0:
                        return (_SHORT if rs == -1 else _BAD_CODE), mcu, pos, nbits
                    run = rs >> 4
                    if rs & 15:
                        k += run + 1
                    elif run == 15:
                        k += 16
                    else:
                        break
            elif mode == _AC_FIRST:
                # T.81 G.1.2.2 (libjpeg's decode_mcu_AC_first)
                if eobrun > 0:
                    eobrun -= 1
                    continue
                k = ss
                while k <= se:
                    rs, pos, acc, nbits, stopped = symbol(pos, acc, nbits, stopped, ac_tables[j])
                    if rs < 0:
                        return (_SHORT if rs == -1 else _BAD_CODE), mcu, pos, nbits
                    run = rs >> 4
                    if rs & 15:
                        k += run
                        if k < 64:
                            nz[mcu] |= one << np.uint64(k)
                    elif run == 15:
                        k += 15
                    else:
                        eobrun, pos, acc, nbits, stopped = end_of_band_run(pos, acc, nbits, stopped, run)
                        if eobrun < 0:
                            return _SHORT, mcu, pos, nbits
                        eobrun -= 1
                        break
                    k += 1
            elif mode == _AC_REFINE:
                # T.81 G.1.2.3 (libjpeg's decode_mcu_AC_refine): each coefficient already
                # nonzero in the band takes one correction bit as the run passes it.
                k = ss
                if eobrun == 0:
                    while k <= se:
                        rs, pos, acc, nbits, stopped = symbol(pos, acc, nbits, stopped, ac_tables[j])
                        if rs < 0:
                            return (_SHORT if rs == -1 else _BAD_CODE), mcu, pos, nbits
                        run = rs >> 4
                        s = rs & 15
                        if s > 1:  # a refinement scan's new coefficients are +-1 (G.1.2.3)
                            return _BAD_CODE, mcu, pos, nbits
                        if s == 0 and run != 15:
                            eobrun, pos, acc, nbits, stopped = end_of_band_run(pos, acc, nbits, stopped, run)
                            if eobrun < 0:
                                return _SHORT, mcu, pos, nbits
                            break
                        while k <= se:
                            if (nz[mcu] >> np.uint64(k)) & one:
                                v, pos, acc, nbits, stopped = bits(pos, acc, nbits, stopped, 1)
                                if v < 0:
                                    return _SHORT, mcu, pos, nbits
                            else:
                                if run == 0:
                                    break
                                run -= 1
                            k += 1
                        if s and k < 64:
                            nz[mcu] |= one << np.uint64(k)
                        k += 1
                if eobrun > 0:
                    while k <= se:
                        if (nz[mcu] >> np.uint64(k)) & one:
                            v, pos, acc, nbits, stopped = bits(pos, acc, nbits, stopped, 1)
                            if v < 0:
                                return _SHORT, mcu, pos, nbits
                        k += 1
                    eobrun -= 1
    return _OK, n_mcus, pos, nbits
