"""Valid IntelliVue messages (association, MDS create, polls, numeric and wave replies) for the protocol tests.

Why a plain module: the IntelliVue protocol tests fuzz the decoder from these messages and the reliability
fuzzer (tests/reliability/test_fuzz.py) seeds its IntelliVue target with them, so both import them from here.
"""
import numpy as np

from appliance.sources.monitor import intellivue_protocol as p


def numeric_reply(values, linked=None):
    """A poll reply carrying one numeric observation per ``(physio_id, value, state)`` in ``values``."""
    obs = [(0x10 + i, [p.nu_obs_attr(pid, v, p.NOM_DIM_BEAT_PER_MIN, state)])
           for i, (pid, v, state) in enumerate(values)]
    return p.encode_poll_reply(5, 9, 1234, p.NOM_MOC_VMO_METRIC_NU, obs, linked_state=linked)


VALID_MESSAGES = [
    p.encode_association_request(),
    p.encode_association_result(),
    p.encode_mds_create_event(1, 2),
    p.encode_mds_create_result(1, 2),
    p.encode_poll_request(1, 1, 6),
    numeric_reply([(p.NOM_ECG_CARD_BEAT_RATE, 150, 0), (p.NOM_PULS_OXIM_SAT_O2, 97, 0)], linked=p.RORLS_LAST),
    p.encode_poll_reply(1, 1, 0, 9, [(1, p.wave_attrs(p.NLS_NOM_ECG_ELEC_POTL_II, p.NOM_ECG_ELEC_POTL_II,
                                                      np.arange(20, dtype=np.uint16), 500.0, (-1.0, 1.0, 0, 4095)))]),
]
