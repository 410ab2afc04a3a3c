/* Compiled twins of the relay's per-packet steady state (see fastrelay.py for what each one mirrors).
 *
 * Each function here does exactly what one Python fast path does, on the same Python objects (their attributes
 * stay the only state: nothing is mirrored here), and bails out to the Python method when anything is not the
 * steady state: a bail-out happens before the first attribute is written, so the Python method then sees the
 * packet as if this code had not run. The only C-level work is what Python would do with bytecode: header
 * packing, counters, and the libsrtp call on a stack buffer (the function pointers come from pylibsrtp's own
 * cffi module, so the same libsrtp contexts are used).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

typedef int (*srtp_fn)(void *ctx, void *buf, int *len);

/* interned attribute names */
#define NAMES(X) \
    X(guard) X(source) X(target) X(srtp) X(on_audio_fast) X(on_audio) X(_fast_pairs_with) X(payload_type) \
    X(_jitter) X(_held) X(_next) X(packets_in) X(bytes_in) X(_arrival) X(_arrival_ts) X(clock_rate) \
    X(interarrival_jitter) X(receive_stats) X(ssrc) X(max_seq) X(received) X(update) X(_sink_failed) \
    X(datagram_received) X(webrtc) X(direct) X(plan) X(passthrough) X(running) X(hold) X(_decoder) \
    X(_ts_base) X(webrtc_pt) X(send) X(last_seq) X(webrtc_frames_out) X(_from_sip_fast) X(_ts_origin) \
    X(_track) X(paused) X(_dtls) X(_state) X(_sender) X(_enabled) X(_srtp) X(session) X(_tx_srtp) X(ctx) \
    X(_ext) X(_abs_offset) X(_connection) X(_nominated) X(_pair) X(_addr) X(protocol) X(transport) \
    X(sendto) X(_seq) X(last_ntp) X(sent) X(octets) X(last_timestamp) X(_ssrc) X(_ts_offset) \
    X(_pending_samples) X(_ts) X(_last_send) X(_dtmf_active) X(_marker) X(packets_out) X(bytes_out) \
    X(dropped) X(send_audio) X(_rr_feed) X(rtp) X(webrtc_frames_in) X(_from_webrtc_rtp) X(feed) \
    X(_receiver) X(_streams) X(packets_received) X(base_seq) X(cycles) X(_last_arrival) \
    X(_last_timestamp) X(_jitter_q4) X(_clockrate) X(sequence_number) X(timestamp) X(srtp_cache) X(dtls) \
    X(_rx_srtp) X(owner) X(_tap) X(slow) X(tap_failed) X(fallback_task) X(_c_send) X(is_closing) \
    X(get_extra_info) X(fileno)

#define DECLARE(n) static PyObject *S_##n;
NAMES(DECLARE)
static PyObject *S_source_ts;  /* keyword */
static PyObject *S_socket_key;  /* "socket" */

static srtp_fn srtp_protect_fn;
static srtp_fn srtp_unprotect_fn;
static PyObject *connected_state;  /* aiortc's State.CONNECTED */
static PyObject *monotonic_override;  /* tests: a Python clock instead of CLOCK_MONOTONIC */
static PyObject *realtime_override;

#define NTP_EPOCH_OFFSET 2208988800.0
#define BUF 2048
#define MAX_PACKET 1500

/* -- small helpers --------------------------------------------------------------------------------------- */

static PyObject *get(PyObject *o, PyObject *name) { return PyObject_GetAttr(o, name); }

/* attribute as a C integer; -1 with an exception set (or *ok = 0) when it is not an int */
static int get_ll(PyObject *o, PyObject *name, long long *out) {
    PyObject *v = PyObject_GetAttr(o, name);
    if (v == NULL) return 0;
    if (!PyLong_CheckExact(v) && !PyBool_Check(v)) { Py_DECREF(v); return 0; }
    *out = PyLong_AsLongLong(v);
    Py_DECREF(v);
    if (*out == -1 && PyErr_Occurred()) return 0;
    return 1;
}

static int set_ll(PyObject *o, PyObject *name, long long value) {
    PyObject *v = PyLong_FromLongLong(value);
    if (v == NULL) return -1;
    int r = PyObject_SetAttr(o, name, v);
    Py_DECREF(v);
    return r;
}

static int add_ll(PyObject *o, PyObject *name, long long delta) {
    long long v;
    if (!get_ll(o, name, &v)) return -1;
    return set_ll(o, name, v + delta);
}

static int set_float(PyObject *o, PyObject *name, double value) {
    PyObject *v = PyFloat_FromDouble(value);
    if (v == NULL) return -1;
    int r = PyObject_SetAttr(o, name, v);
    Py_DECREF(v);
    return r;
}

/* truth value of an attribute: 1, 0, or -1 (error) */
static int get_truth(PyObject *o, PyObject *name) {
    PyObject *v = PyObject_GetAttr(o, name);
    if (v == NULL) return -1;
    int r = PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
}

static double clock_of(clockid_t id, PyObject *override) {
    if (override != NULL) {
        PyObject *v = PyObject_CallNoArgs(override);
        if (v == NULL) return -1.0;
        double d = PyFloat_AsDouble(v);
        Py_DECREF(v);
        return d;
    }
    struct timespec t;
    clock_gettime(id, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static double monotonic_now(void) { return clock_of(CLOCK_MONOTONIC, monotonic_override); }
static double realtime_now(void) { return clock_of(CLOCK_REALTIME, realtime_override); }

/* the Python method `name` of type(obj), called with obj and args (the bail-out) */
static PyObject *python_method(PyObject *obj, PyObject *name, PyObject *const *args, Py_ssize_t nargs) {
    PyErr_Clear();
    PyObject *func = PyObject_GetAttr((PyObject *)Py_TYPE(obj), name);
    if (func == NULL) return NULL;
    PyObject *stack[8];
    stack[0] = obj;
    for (Py_ssize_t i = 0; i < nargs && i < 7; i++) stack[i + 1] = args[i];
    PyObject *r = PyObject_Vectorcall(func, stack, (size_t)nargs + 1, NULL);
    Py_DECREF(func);
    return r;
}

/* callable(*args). An exception it raises goes to obj.<on_error>(exc[, extra]), which logs it (the packet is not
 * retried), and *failed is set. Returns the call's result, Py_None after a reported failure, NULL on an error. */
static PyObject *call_reporting(PyObject *callable, PyObject *const *args, Py_ssize_t n, PyObject *obj,
                                PyObject *on_error, PyObject *extra, int *failed) {
    PyObject *r = PyObject_Vectorcall(callable, args, (size_t)n, NULL);
    *failed = r == NULL;
    if (r != NULL) return r;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (value == NULL) { Py_XDECREF(type); Py_XDECREF(tb); return Py_NewRef(Py_None); }
    if (tb != NULL) PyException_SetTraceback(value, tb);
    r = extra == NULL ? PyObject_CallMethodOneArg(obj, on_error, value)
                      : PyObject_CallMethodObjArgs(obj, on_error, value, extra, NULL);
    Py_XDECREF(type); Py_DECREF(value); Py_XDECREF(tb);
    return r;
}

static void put16(uint8_t *p, unsigned v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void put32(uint8_t *p, uint32_t v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = (uint8_t)v; }
static unsigned get16(const uint8_t *p) { return ((unsigned)p[0] << 8) | p[1]; }
static uint32_t get32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* the srtp_t pointer of a webrtc_fastpath.FastSrtp (its `ctx` int); 0 when there is none */
static void *srtp_ctx(PyObject *fast_srtp) {
    long long ptr;
    if (!get_ll(fast_srtp, S_ctx, &ptr)) { PyErr_Clear(); return NULL; }
    return (void *)(uintptr_t)ptr;
}

/* The socket and sockaddr behind (transport, addr), cached on `owner` as its `_c_send` attribute:
 * (transport, addr, fd, sockaddr bytes). Built only from an address the Python side already sends to (a numeric
 * IP in a tuple: nothing is resolved). 0 when there is none (the transport's own sendto is used). */
static int dest_of(PyObject *owner, PyObject *transport, PyObject *addr, int *fd, struct sockaddr_storage *sa,
                   socklen_t *salen) {
    PyObject *cache = PyObject_GetAttr(owner, S__c_send);
    if (cache == NULL) PyErr_Clear();
    if (cache != NULL && PyTuple_CheckExact(cache) && PyTuple_GET_SIZE(cache) == 4
            && PyTuple_GET_ITEM(cache, 0) == transport && PyTuple_GET_ITEM(cache, 1) == addr) {
        PyObject *raw = PyTuple_GET_ITEM(cache, 3);
        *fd = (int)PyLong_AsLong(PyTuple_GET_ITEM(cache, 2));
        *salen = (socklen_t)PyBytes_GET_SIZE(raw);
        memcpy(sa, PyBytes_AS_STRING(raw), (size_t)*salen);
        Py_DECREF(cache);
        return 1;
    }
    Py_XDECREF(cache);
    if (!PyTuple_CheckExact(addr) || PyTuple_GET_SIZE(addr) < 2 || !PyUnicode_Check(PyTuple_GET_ITEM(addr, 0)))
        return 0;
    const char *host = PyUnicode_AsUTF8(PyTuple_GET_ITEM(addr, 0));
    long port = PyLong_AsLong(PyTuple_GET_ITEM(addr, 1));
    if (host == NULL || port < 0 || port > 65535) { PyErr_Clear(); return 0; }
    memset(sa, 0, sizeof(*sa));
    struct sockaddr_in *v4 = (struct sockaddr_in *)sa;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)sa;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        *salen = sizeof(*v4);
    } else if (PyTuple_GET_SIZE(addr) == 2 && inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        *salen = sizeof(*v6);
    } else {
        return 0;  /* a scoped IPv6 address or a name: the transport's sendto */
    }
    PyObject *sock = PyObject_CallMethodOneArg(transport, S_get_extra_info, S_socket_key);
    PyObject *fileno = sock == NULL || sock == Py_None ? NULL : PyObject_CallMethodNoArgs(sock, S_fileno);
    Py_XDECREF(sock);
    if (fileno == NULL) { PyErr_Clear(); return 0; }
    *fd = (int)PyLong_AsLong(fileno);
    if (*fd < 0) { Py_DECREF(fileno); PyErr_Clear(); return 0; }
    PyObject *raw = PyBytes_FromStringAndSize((const char *)sa, *salen);
    PyObject *entry = raw == NULL ? NULL : PyTuple_Pack(4, transport, addr, fileno, raw);
    Py_DECREF(fileno); Py_XDECREF(raw);
    if (entry == NULL || PyObject_SetAttr(owner, S__c_send, entry) < 0) { Py_XDECREF(entry); PyErr_Clear(); return 0; }
    Py_DECREF(entry);
    return 1;
}

/* Send one datagram: straight to the transport's socket when it is open (one sendto, none of the event loop's
 * per-call address conversion), else, or when that fails (a full socket buffer, say), transport.sendto. */
static int send_datagram(PyObject *owner, PyObject *transport, const uint8_t *buf, int len, PyObject *addr) {
    int fd;
    struct sockaddr_storage sa;
    socklen_t salen;
    if (dest_of(owner, transport, addr, &fd, &sa, &salen)) {
        PyObject *closing = PyObject_CallMethodNoArgs(transport, S_is_closing);
        int open = closing != NULL && closing == Py_False;
        Py_XDECREF(closing);
        if (closing == NULL) PyErr_Clear();
        if (open && sendto(fd, buf, (size_t)len, 0, (struct sockaddr *)&sa, salen) == len) return 0;
    }
    PyObject *data = PyBytes_FromStringAndSize((const char *)buf, len);
    if (data == NULL) return -1;
    PyObject *args[3] = {transport, data, addr};
    PyObject *r = PyObject_VectorcallMethod(S_sendto, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(data);
    if (r == NULL) return -1;
    Py_DECREF(r);
    return 0;
}

/* -- RtpLeg.datagram_received: in-order passthrough audio (rtp_leg.py, the fast path at its top) ------------ */

static PyObject *rtp_receive(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) { PyErr_SetString(PyExc_TypeError, "rtp_receive(leg, data, addr)"); return NULL; }
    PyObject *leg = args[0], *data = args[1], *addr = args[2];
    PyObject *guard = NULL, *source = NULL, *fast = NULL, *on_audio = NULL, *pairs = NULL, *jitter = NULL;
    PyObject *stats = NULL, *result = NULL;
    if (!PyBytes_CheckExact(data)) goto slow;
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(data);
    if (n <= 12 || p[0] != 0x80) goto slow;
    if ((guard = get(leg, S_guard)) == NULL || (source = get(guard, S_source)) == NULL) goto slow;
    if (source == Py_None || PyObject_RichCompareBool(addr, source, Py_EQ) != 1) goto slow;
    {
        PyObject *srtp = get(leg, S_srtp);
        if (srtp == NULL) goto slow;
        int plain = srtp == Py_None;
        Py_DECREF(srtp);
        if (!plain) goto slow;  /* SDES-SRTP: Python */
    }
    if ((fast = get(leg, S_on_audio_fast)) == NULL || fast == Py_None) goto slow;
    if ((on_audio = get(leg, S_on_audio)) == NULL || (pairs = get(leg, S__fast_pairs_with)) == NULL) goto slow;
    if (on_audio != pairs) goto slow;
    long long pt, clock_rate, arrival_ts, max_seq, stats_ssrc, next;
    if (!get_ll(leg, S_payload_type, &pt) || (p[1] & 0x7F) != pt) goto slow;
    unsigned seq = get16(p + 2);
    uint32_t ts = get32(p + 4), ssrc = get32(p + 8);
    if ((jitter = get(leg, S__jitter)) == NULL) goto slow;
    int held = get_truth(jitter, S__held);
    if (held != 0) goto slow;
    {
        PyObject *nx = get(jitter, S__next);
        if (nx == NULL) goto slow;
        int none = nx == Py_None;
        next = none ? -1 : PyLong_AsLongLong(nx);
        Py_DECREF(nx);
        if (!none && next != (long long)seq) goto slow;
    }
    if (!get_ll(leg, S_clock_rate, &clock_rate) || clock_rate <= 0) goto slow;
    if ((stats = get(leg, S_receive_stats)) == NULL) goto slow;
    PyObject *arrival_obj = get(leg, S__arrival);
    if (arrival_obj == NULL) goto slow;
    double arrival = arrival_obj == Py_None ? -1.0 : PyFloat_AsDouble(arrival_obj);
    int have_arrival = arrival_obj != Py_None;
    Py_DECREF(arrival_obj);
    if (have_arrival && arrival == -1.0 && PyErr_Occurred()) goto slow;
    if (!get_ll(leg, S__arrival_ts, &arrival_ts)) goto slow;
    PyObject *jit = get(leg, S_interarrival_jitter);
    if (jit == NULL) goto slow;
    double J = PyFloat_AsDouble(jit);
    Py_DECREF(jit);
    if (J == -1.0 && PyErr_Occurred()) goto slow;
    int stats_fast = 0;
    {
        PyObject *s = get(stats, S_ssrc);
        if (s == NULL) goto slow;
        int none = s == Py_None;
        stats_ssrc = none ? -1 : PyLong_AsLongLong(s);
        Py_DECREF(s);
        if (!get_ll(stats, S_max_seq, &max_seq)) goto slow;
        long long d = (long long)seq - max_seq;
        stats_fast = !none && stats_ssrc == (long long)ssrc && 0 < d && d < 3000;
    }
    double now = monotonic_now();
    if (now == -1.0 && PyErr_Occurred()) goto slow;

    /* steady state: from here on the packet is ours */
    if (set_ll(jitter, S__next, (seq + 1) & 0xFFFF) < 0 || add_ll(leg, S_packets_in, 1) < 0
            || add_ll(leg, S_bytes_in, n) < 0) goto done;
    if (have_arrival) {  /* RFC 3550 A.8, as RtpLeg._update_jitter */
        long long dts = ((((long long)ts - arrival_ts) + 0x80000000LL) & 0xFFFFFFFFLL) - 0x80000000LL;
        double d = (now - arrival) - (double)dts / (double)clock_rate;
        if (d < 0) d = -d;
        if (d < 5.0 && set_float(leg, S_interarrival_jitter, J + (d - J) / 16) < 0) goto done;
    }
    if (set_float(leg, S__arrival, now) < 0 || set_ll(leg, S__arrival_ts, ts) < 0) goto done;
    if (stats_fast) {
        if (set_ll(stats, S_max_seq, seq) < 0 || add_ll(stats, S_received, 1) < 0) goto done;
    } else {
        PyObject *a[3] = {stats, NULL, NULL};
        a[1] = PyLong_FromUnsignedLong(ssrc);
        a[2] = PyLong_FromUnsignedLong(seq);
        PyObject *r = (a[1] && a[2]) ? PyObject_VectorcallMethod(S_update, a, 3, NULL) : NULL;
        Py_XDECREF(a[1]); Py_XDECREF(a[2]);
        if (r == NULL) goto done;
        Py_DECREF(r);
    }
    {
        PyObject *tsobj = PyLong_FromUnsignedLong(ts);
        if (tsobj == NULL) goto done;
        PyObject *a[2] = {data, tsobj};
        int failed;
        PyObject *r = call_reporting(fast, a, 2, leg, S__sink_failed, NULL, &failed);
        Py_DECREF(tsobj);
        if (r == NULL) goto done;
        Py_DECREF(r);
    }
    result = Py_NewRef(Py_None);
    goto done;
slow:
    result = python_method(leg, S_datagram_received, args + 1, 2);
done:
    Py_XDECREF(guard); Py_XDECREF(source); Py_XDECREF(fast); Py_XDECREF(on_audio); Py_XDECREF(pairs);
    Py_XDECREF(jitter); Py_XDECREF(stats);
    return result;
}

/* -- DirectSender.send (webrtc_fastpath.py) ----------------------------------------------------------------- */

/* 1: sent, 0: not the steady state (nothing written), -1: error */
static int direct_send_fast(PyObject *sender, long long pt, PyObject *payload, long long timestamp, int marker) {
    int result = 0;
    PyObject *track = NULL, *dtls = NULL, *st = NULL, *aiortc_sender = NULL, *cache = NULL, *srtp = NULL;
    PyObject *session = NULL, *tx = NULL, *ext = NULL, *connection = NULL, *nominated = NULL, *pair = NULL;
    PyObject *mine = NULL, *addr = NULL, *protocol = NULL, *transport = NULL;
    if (!PyBytes_CheckExact(payload) || srtp_protect_fn == NULL || connected_state == NULL) goto out;
    Py_ssize_t plen = PyBytes_GET_SIZE(payload);
    long long origin, seq, abs_offset, ssrc;
    if (!get_ll(sender, S__ts_origin, &origin)) goto out;
    if ((track = get(sender, S__track)) == NULL || get_truth(track, S_paused) != 0) goto out;
    if ((dtls = get(sender, S__dtls)) == NULL || (st = get(dtls, S__state)) == NULL || st != connected_state) goto out;
    if ((aiortc_sender = get(sender, S__sender)) == NULL || get_truth(aiortc_sender, S__enabled) != 1) goto out;
    if ((cache = get(sender, S__srtp)) == NULL || !PyList_CheckExact(cache) || PyList_GET_SIZE(cache) < 1) goto out;
    srtp = Py_NewRef(PyList_GET_ITEM(cache, 0));
    if (srtp == Py_None || (session = get(srtp, S_session)) == NULL || (tx = get(dtls, S__tx_srtp)) == NULL
            || session != tx) goto out;
    void *ctx = srtp_ctx(srtp);
    if (ctx == NULL) goto out;
    if ((ext = get(sender, S__ext)) == NULL || !PyBytes_CheckExact(ext)) goto out;
    Py_ssize_t elen = PyBytes_GET_SIZE(ext);
    if (!get_ll(sender, S__abs_offset, &abs_offset)) goto out;
    if ((connection = get(sender, S__connection)) == NULL || (nominated = get(connection, S__nominated)) == NULL
            || !PyDict_CheckExact(nominated)) goto out;
    {
        PyObject *one = PyLong_FromLong(1);
        if (one == NULL) goto out;
        pair = PyDict_GetItemWithError(nominated, one);  /* borrowed */
        Py_DECREF(one);
        if (pair == NULL) goto out;
        Py_INCREF(pair);
    }
    if ((mine = get(sender, S__pair)) == NULL || mine != pair) goto out;
    if ((addr = get(sender, S__addr)) == NULL) goto out;
    if (!get_ll(sender, S__seq, &seq) || !get_ll(sender, S__ssrc, &ssrc)) goto out;
    if (12 + elen + plen > MAX_PACKET) goto out;
    if ((protocol = get(pair, S_protocol)) == NULL || (transport = get(protocol, S_transport)) == NULL) goto out;
    double now = realtime_now();
    if (now == -1.0 && PyErr_Occurred()) goto out;

    uint64_t ntp = (uint64_t)((now + NTP_EPOCH_OFFSET) * 4294967296.0);
    uint32_t ts = (uint32_t)((origin + timestamp) & 0xFFFFFFFFLL);
    uint8_t buf[BUF];
    buf[0] = elen ? 0x90 : 0x80;
    buf[1] = (uint8_t)((marker ? 0x80 : 0) | (pt & 0x7F));
    put16(buf + 2, (unsigned)seq);
    put32(buf + 4, ts);
    put32(buf + 8, (uint32_t)ssrc);
    memcpy(buf + 12, PyBytes_AS_STRING(ext), (size_t)elen);
    if (elen && abs_offset >= 0 && abs_offset + 3 <= elen) {
        uint32_t abs_time = (uint32_t)((ntp >> 14) & 0xFFFFFF);
        buf[12 + abs_offset] = abs_time >> 16;
        buf[12 + abs_offset + 1] = abs_time >> 8;
        buf[12 + abs_offset + 2] = (uint8_t)abs_time;
    }
    memcpy(buf + 12 + elen, PyBytes_AS_STRING(payload), (size_t)plen);
    int len = (int)(12 + elen + plen);
    if (srtp_protect_fn(ctx, buf, &len) != 0) goto out;  /* Python then raises what pylibsrtp raises */
    /* from here on the packet is ours */
    result = -1;
    if (send_datagram(sender, transport, buf, len, addr) < 0) goto out;
    if (set_ll(sender, S__seq, (seq + 1) & 0xFFFF) < 0 || set_ll(sender, S_last_seq, seq) < 0) goto out;
    PyObject *ntp_obj = PyLong_FromUnsignedLongLong(ntp);
    if (ntp_obj == NULL) goto out;
    int r = PyObject_SetAttr(sender, S_last_ntp, ntp_obj);
    Py_DECREF(ntp_obj);
    if (r < 0 || add_ll(sender, S_sent, 1) < 0 || add_ll(sender, S_octets, plen) < 0
            || set_ll(sender, S_last_timestamp, ts) < 0) goto out;
    result = 1;
out:
    if (result == 0) PyErr_Clear();
    Py_XDECREF(track); Py_XDECREF(dtls); Py_XDECREF(st); Py_XDECREF(aiortc_sender); Py_XDECREF(cache);
    Py_XDECREF(srtp); Py_XDECREF(session); Py_XDECREF(tx); Py_XDECREF(ext); Py_XDECREF(connection);
    Py_XDECREF(nominated); Py_XDECREF(pair); Py_XDECREF(mine); Py_XDECREF(addr); Py_XDECREF(protocol);
    Py_XDECREF(transport);
    return result;
}

/* direct_send(sender, payload_type, payload, timestamp, marker=False) -> bool, as DirectSender.send */
static PyObject *direct_send(PyObject *mod, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    PyObject *marker_obj = NULL;
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t i = 0; i < nkw; i++) {
        if (PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, i), "marker") != 0 || nargs != 4) {
            PyErr_SetString(PyExc_TypeError, "direct_send(sender, payload_type, payload, timestamp, marker=False)");
            return NULL;
        }
        marker_obj = args[nargs + i];
    }
    if (nargs == 5) marker_obj = args[4];
    if (nargs < 4 || nargs > 5) {
        PyErr_SetString(PyExc_TypeError, "direct_send(sender, payload_type, payload, timestamp, marker=False)");
        return NULL;
    }
    long long pt = PyLong_AsLongLong(args[1]), ts = PyLong_AsLongLong(args[3]);
    int marker = marker_obj != NULL ? PyObject_IsTrue(marker_obj) : 0;
    if (!PyErr_Occurred() && marker >= 0) {
        int r = direct_send_fast(args[0], pt, args[2], ts, marker);
        if (r == 1) Py_RETURN_TRUE;
        if (r < 0) return NULL;
    }
    PyObject *a[4] = {args[1], args[2], args[3], marker_obj != NULL ? marker_obj : Py_False};
    return python_method(args[0], S_send, a, 4);
}

/* -- Relay._from_sip_fast (relay.py): passthrough towards Matrix -------------------------------------------- */

static PyObject *relay_from_sip(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) { PyErr_SetString(PyExc_TypeError, "relay_from_sip(relay, data, timestamp)"); return NULL; }
    PyObject *relay = args[0], *data = args[1];
    PyObject *webrtc = NULL, *direct = NULL, *plan = NULL, *decoder = NULL, *base_obj = NULL, *result = NULL;
    long long ts, pt, base;
    if (!PyBytes_CheckExact(data) || PyBytes_GET_SIZE(data) <= 12) goto slow;
    ts = PyLong_AsLongLong(args[2]);
    if (ts == -1 && PyErr_Occurred()) goto slow;
    if ((webrtc = get(relay, S_webrtc)) == NULL || (direct = get(webrtc, S_direct)) == NULL || direct == Py_None)
        goto slow;
    if ((plan = get(relay, S_plan)) == NULL || plan == Py_None || get_truth(plan, S_passthrough) != 1) goto slow;
    if (get_truth(relay, S_running) != 1 || get_truth(relay, S_hold) != 0) goto slow;
    if ((decoder = get(relay, S__decoder)) == NULL || decoder != Py_None) goto slow;
    if (!get_ll(plan, S_webrtc_pt, &pt)) goto slow;
    if ((base_obj = get(relay, S__ts_base)) == NULL) goto slow;
    if (base_obj == Py_None) {
        if (set_ll(relay, S__ts_base, ts) < 0) goto done;
        base = ts;
    } else {
        base = PyLong_AsLongLong(base_obj);
        if (base == -1 && PyErr_Occurred()) goto slow;
    }
    {
        PyObject *last_obj = get(direct, S_last_seq);
        if (last_obj == NULL) goto done;
        int first = last_obj == Py_None;
        Py_DECREF(last_obj);
        PyObject *payload = PyBytes_FromStringAndSize(PyBytes_AS_STRING(data) + 12, PyBytes_GET_SIZE(data) - 12);
        if (payload == NULL) goto done;
        long long rel = (ts - base) & 0xFFFFFFFFLL;
        int r = direct_send_fast(direct, pt, payload, rel, first);
        if (r == 0) {  /* not its steady state: DirectSender.send */
            PyObject *pt_obj = PyLong_FromLongLong(pt), *rel_obj = PyLong_FromLongLong(rel);
            PyObject *a[4] = {pt_obj, payload, rel_obj, first ? Py_True : Py_False};
            PyObject *sent = (pt_obj && rel_obj) ? python_method(direct, S_send, a, 4) : NULL;
            Py_XDECREF(pt_obj); Py_XDECREF(rel_obj);
            r = sent == NULL ? -1 : 1;
            Py_XDECREF(sent);
        }
        Py_DECREF(payload);
        if (r < 0) goto done;
    }
    if (add_ll(relay, S_webrtc_frames_out, 1) < 0) goto done;
    result = Py_NewRef(Py_None);
    goto done;
slow:
    result = python_method(relay, S__from_sip_fast, args + 1, 2);
done:
    Py_XDECREF(webrtc); Py_XDECREF(direct); Py_XDECREF(plan); Py_XDECREF(decoder); Py_XDECREF(base_obj);
    return result;
}

/* -- RtpLeg.send_audio, the in-step G.711/G.722 branch (rtp_leg.py) ----------------------------------------- */

/* 1: handled (sent or counted as dropped), 0: not the in-step case (nothing written), -1: error */
static int send_audio_fast(PyObject *leg, const char *payload, Py_ssize_t plen, long long source_ts) {
    int result = 0;
    PyObject *offset_obj = NULL, *last_send = NULL, *srtp = NULL, *transport = NULL, *guard = NULL;
    PyObject *remote = NULL;
    long long offset, clock_rate, pending, cur, dtmf_active, pt, marker, hold, seq, ssrc;
    if ((offset_obj = get(leg, S__ts_offset)) == NULL || offset_obj == Py_None) goto out;
    offset = PyLong_AsLongLong(offset_obj);
    if (offset == -1 && PyErr_Occurred()) goto out;
    if (!get_ll(leg, S_clock_rate, &clock_rate) || clock_rate != 8000) goto out;
    if (!get_ll(leg, S__pending_samples, &pending) || !get_ll(leg, S__ts, &cur)) goto out;
    uint32_t ts = (uint32_t)((source_ts + offset) & 0xFFFFFFFFLL);
    if (ts != (uint32_t)((cur + pending) & 0xFFFFFFFFLL) || pending <= 0) goto out;
    if ((last_send = get(leg, S__last_send)) == NULL || last_send == Py_None) goto out;
    if (!get_ll(leg, S__dtmf_active, &dtmf_active) || dtmf_active) goto out;
    if (!get_ll(leg, S_payload_type, &pt)) goto out;
    if ((srtp = get(leg, S_srtp)) == NULL || srtp != Py_None) goto out;  /* SDES-SRTP: Python */
    if (!get_ll(leg, S__marker, &marker) || !get_ll(leg, S_hold, &hold)) goto out;
    if (!get_ll(leg, S__seq, &seq) || !get_ll(leg, S_ssrc, &ssrc)) goto out;
    if ((transport = get(leg, S_transport)) == NULL || (guard = get(leg, S_guard)) == NULL
            || (remote = get(guard, S_target)) == NULL) goto out;
    if (12 + plen > MAX_PACKET) goto out;
    double now = monotonic_now();
    if (now == -1.0 && PyErr_Occurred()) goto out;
    /* from here on the payload is ours */
    result = -1;
    if (set_ll(leg, S__ts, ts) < 0 || set_ll(leg, S__pending_samples, plen) < 0
            || set_float(leg, S__last_send, now) < 0 || PyObject_SetAttr(leg, S__marker, Py_False) < 0) goto out;
    if (transport == Py_None || remote == Py_None || hold) {
        result = add_ll(leg, S_dropped, 1) < 0 ? -1 : 1;
        goto out;
    }
    uint8_t buf[BUF];
    buf[0] = 0x80;
    buf[1] = (uint8_t)(marker ? 0x80 | pt : pt);
    put16(buf + 2, (unsigned)seq);
    put32(buf + 4, ts);
    put32(buf + 8, (uint32_t)ssrc);
    memcpy(buf + 12, payload, (size_t)plen);
    if (send_datagram(leg, transport, buf, (int)(12 + plen), remote) < 0) goto out;
    if (add_ll(leg, S_packets_out, 1) < 0 || add_ll(leg, S_bytes_out, 12 + plen) < 0
            || set_ll(leg, S__seq, (seq + 1) & 0xFFFF) < 0) goto out;
    result = 1;
out:
    if (result == 0) PyErr_Clear();
    Py_XDECREF(offset_obj); Py_XDECREF(last_send); Py_XDECREF(srtp); Py_XDECREF(transport); Py_XDECREF(guard);
    Py_XDECREF(remote);
    return result;
}

/* -- ReceiverReportFeed.feed (rtcp_feed.py) = aiortc's StreamStatistics.add ------------------------------- */

static int uint16_gt(long long a, long long b) {
    return (a > b && a - b < 0x8000) || (a < b && b - a > 0x8000);
}

/* 1: counted, 0: not handled here (nothing written), -1: error */
static int feed_fast(PyObject *feed, uint32_t ssrc, unsigned seq, uint32_t ts) {
    int result = 0;
    PyObject *receiver = NULL, *streams = NULL, *stats = NULL, *max_obj = NULL, *base_obj = NULL;
    PyObject *arr_obj = NULL, *lts_obj = NULL;
    long long received, cycles, q4, clock;
    if ((receiver = get(feed, S__receiver)) == NULL) goto out;
    int enabled = get_truth(receiver, S__enabled);
    if (enabled < 0) goto out;
    if (!enabled) { result = 1; goto out; }  /* held: aiortc would not count it either */
    if ((streams = get(feed, S__streams)) == NULL || !PyDict_CheckExact(streams)) goto out;
    {
        PyObject *key = PyLong_FromUnsignedLong(ssrc);
        if (key == NULL) goto out;
        stats = PyDict_GetItemWithError(streams, key);
        Py_DECREF(key);
        if (stats == NULL) goto out;  /* a new stream: the Python method registers it */
        Py_INCREF(stats);
    }
    if ((max_obj = get(stats, S_max_seq)) == NULL || (base_obj = get(stats, S_base_seq)) == NULL) goto out;
    if (!get_ll(stats, S_packets_received, &received) || !get_ll(stats, S_cycles, &cycles)
            || !get_ll(stats, S__jitter_q4, &q4) || !get_ll(stats, S__clockrate, &clock)) goto out;
    if ((arr_obj = get(stats, S__last_arrival)) == NULL || (lts_obj = get(stats, S__last_timestamp)) == NULL) goto out;
    if (max_obj == Py_None || base_obj == Py_None || arr_obj == Py_None || lts_obj == Py_None) goto out;
    long long max_seq = PyLong_AsLongLong(max_obj), last_arrival = PyLong_AsLongLong(arr_obj);
    long long last_ts = PyLong_AsLongLong(lts_obj);
    if (PyErr_Occurred()) goto out;
    double now = realtime_now();
    if (now == -1.0 && PyErr_Occurred()) goto out;
    result = -1;
    if (set_ll(feed, S_sequence_number, seq) < 0 || set_ll(feed, S_timestamp, ts) < 0) goto out;
    received += 1;
    if (set_ll(stats, S_packets_received, received) < 0) goto out;
    if (uint16_gt(seq, max_seq)) {
        long long arrival = (long long)(now * (double)clock);
        if ((long long)seq < max_seq && set_ll(stats, S_cycles, cycles + (1 << 16)) < 0) goto out;
        if (set_ll(stats, S_max_seq, seq) < 0) goto out;
        if ((long long)ts != last_ts && received > 1) {
            long long diff = (arrival - last_arrival) - ((long long)ts - last_ts);
            if (diff < 0) diff = -diff;
            /* Python's >> floors: so does an arithmetic shift of a negative long long (gcc, clang) */
            if (set_ll(stats, S__jitter_q4, q4 + diff - ((q4 + 8) >> 4)) < 0) goto out;
        }
        if (set_ll(stats, S__last_arrival, arrival) < 0 || set_ll(stats, S__last_timestamp, ts) < 0) goto out;
    }
    result = 1;
out:
    if (result == 0) PyErr_Clear();
    Py_XDECREF(receiver); Py_XDECREF(streams); Py_XDECREF(stats); Py_XDECREF(max_obj); Py_XDECREF(base_obj);
    Py_XDECREF(arr_obj); Py_XDECREF(lts_obj);
    return result;
}

/* -- Relay._from_webrtc_rtp (relay.py): passthrough towards the phone -------------------------------------- */

/* relay_from_webrtc(relay, data) -> bool: the RTP tap */
static PyObject *relay_from_webrtc(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) { PyErr_SetString(PyExc_TypeError, "relay_from_webrtc(relay, data)"); return NULL; }
    PyObject *relay = args[0], *data = args[1];
    PyObject *plan = NULL, *feed = NULL, *rtp = NULL, *result = NULL;
    long long pt;
    if (!PyBytes_CheckExact(data)) goto slow;
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(data);
    if (n <= 12 || (p[0] & 0xEF) != 0x80) goto slow;
    if ((plan = get(relay, S_plan)) == NULL || plan == Py_None || get_truth(plan, S_passthrough) != 1) goto slow;
    if (!get_ll(plan, S_webrtc_pt, &pt) || (p[1] & 0x7F) != pt) goto slow;
    unsigned seq = get16(p + 2);
    uint32_t ts = get32(p + 4), ssrc = get32(p + 8);
    Py_ssize_t offset = 12;
    if (p[0] & 0x10) offset = n >= 16 ? 16 + 4 * (Py_ssize_t)get16(p + 14) : n + 1;
    if (offset > n) goto slow;
    if ((feed = get(relay, S__rr_feed)) == NULL) goto slow;
    int running = get_truth(relay, S_running), hold = get_truth(relay, S_hold);
    if (running < 0 || hold < 0 || (rtp = get(relay, S_rtp)) == NULL) goto slow;
    /* from here on the packet is ours */
    if (feed != Py_None) {
        int r = feed_fast(feed, ssrc, seq, ts);
        if (r < 0) goto done;
        if (r == 0) {
            PyObject *a[4] = {feed, PyLong_FromUnsignedLong(ssrc), PyLong_FromUnsignedLong(seq),
                              PyLong_FromUnsignedLong(ts)};
            PyObject *x = (a[1] && a[2] && a[3]) ? PyObject_VectorcallMethod(S_feed, a, 4, NULL) : NULL;
            Py_XDECREF(a[1]); Py_XDECREF(a[2]); Py_XDECREF(a[3]);
            if (x == NULL) goto done;
            Py_DECREF(x);
        }
    }
    if (running && !hold) {
        int r = send_audio_fast(rtp, (const char *)p + offset, n - offset, ts);
        if (r < 0) goto done;
        if (r == 0) {
            PyObject *payload = PyBytes_FromStringAndSize((const char *)p + offset, n - offset);
            PyObject *tsobj = PyLong_FromUnsignedLong(ts);
            PyObject *a[3] = {rtp, payload, tsobj};
            PyObject *kw = PyTuple_Pack(1, S_source_ts);
            PyObject *x = (payload && tsobj && kw)
                ? PyObject_VectorcallMethod(S_send_audio, a, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, kw) : NULL;
            Py_XDECREF(payload); Py_XDECREF(tsobj); Py_XDECREF(kw);
            if (x == NULL) goto done;
            Py_DECREF(x);
        }
        if (add_ll(relay, S_webrtc_frames_in, 1) < 0) goto done;
    } else if (add_ll(relay, S_dropped, 1) < 0) {
        goto done;
    }
    result = Py_NewRef(Py_True);
    goto done;
slow:
    result = python_method(relay, S__from_webrtc_rtp, args + 1, 1);
done:
    Py_XDECREF(plan); Py_XDECREF(feed); Py_XDECREF(rtp);
    return result;
}

/* -- the ICE socket's datagram_received (webrtc_fastpath.IceReceive.slow) ----------------------------------- */

static PyObject *ice_receive(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) { PyErr_SetString(PyExc_TypeError, "ice_receive(state, data, addr)"); return NULL; }
    PyObject *state = args[0], *data = args[1];
    PyObject *cache = NULL, *srtp = NULL, *dtls = NULL, *rx = NULL, *session = NULL, *owner = NULL, *tap = NULL;
    PyObject *plain = NULL, *result = NULL;
    if (!PyBytes_CheckExact(data) || srtp_unprotect_fn == NULL) goto slow;
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(data);
    /* SRTP: first byte 128..191 (RFC 7983), second byte not an RTCP type 192..223 (RFC 5761) */
    if (n <= 12 || n > MAX_PACKET || p[0] < 128 || p[0] > 191 || (p[1] > 191 && p[1] < 224)) goto slow;
    if ((cache = get(state, S_srtp_cache)) == NULL || !PyList_CheckExact(cache) || PyList_GET_SIZE(cache) < 1)
        goto slow;
    srtp = Py_NewRef(PyList_GET_ITEM(cache, 0));
    if (srtp == Py_None || (dtls = get(state, S_dtls)) == NULL || (rx = get(dtls, S__rx_srtp)) == NULL
            || (session = get(srtp, S_session)) == NULL || session != rx) goto slow;
    void *ctx = srtp_ctx(srtp);
    if (ctx == NULL) goto slow;
    if ((owner = get(state, S_owner)) == NULL || (tap = get(owner, S__tap)) == NULL || tap == Py_None) goto slow;
    uint8_t buf[BUF];
    int len = (int)n;
    memcpy(buf, p, (size_t)n);
    if (srtp_unprotect_fn(ctx, buf, &len) != 0) {  /* replay, authentication: aiortc drops those too */
        result = Py_NewRef(Py_None);
        goto done;
    }
    if ((plain = PyBytes_FromStringAndSize((const char *)buf, len)) == NULL) goto done;
    {
        PyObject *a[1] = {plain};
        int failed;
        PyObject *taken = call_reporting(tap, a, 1, state, S_tap_failed, plain, &failed);
        if (taken == NULL) goto done;
        int ok = failed ? 1 : PyObject_IsTrue(taken);  /* a failed tap's packet went to tap_failed */
        Py_DECREF(taken);
        if (ok < 0) goto done;
        if (!ok) {
            PyObject *x = PyObject_CallMethodOneArg(state, S_fallback_task, plain);
            if (x == NULL) goto done;
            Py_DECREF(x);
        }
    }
    result = Py_NewRef(Py_None);
    goto done;
slow:
    result = python_method(state, S_slow, args + 1, 2);
done:
    Py_XDECREF(cache); Py_XDECREF(srtp); Py_XDECREF(dtls); Py_XDECREF(rx); Py_XDECREF(session);
    Py_XDECREF(owner); Py_XDECREF(tap); Py_XDECREF(plain);
    return result;
}

/* -- module ------------------------------------------------------------------------------------------------ */

static PyObject *setup(PyObject *mod, PyObject *args) {
    unsigned long long protect, unprotect;
    PyObject *connected;
    if (!PyArg_ParseTuple(args, "KKO", &protect, &unprotect, &connected)) return NULL;
    srtp_protect_fn = (srtp_fn)(uintptr_t)protect;
    srtp_unprotect_fn = (srtp_fn)(uintptr_t)unprotect;
    Py_XSETREF(connected_state, Py_NewRef(connected));
    Py_RETURN_NONE;
}

static PyObject *set_clocks(PyObject *mod, PyObject *args) {
    PyObject *mono, *real;
    if (!PyArg_ParseTuple(args, "OO", &mono, &real)) return NULL;
    Py_XSETREF(monotonic_override, mono == Py_None ? NULL : Py_NewRef(mono));
    Py_XSETREF(realtime_override, real == Py_None ? NULL : Py_NewRef(real));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"rtp_receive", (PyCFunction)(void (*)(void))rtp_receive, METH_FASTCALL, "RtpLeg.datagram_received"},
    {"direct_send", (PyCFunction)(void (*)(void))direct_send, METH_FASTCALL | METH_KEYWORDS, "DirectSender.send"},
    {"relay_from_sip", (PyCFunction)(void (*)(void))relay_from_sip, METH_FASTCALL, "Relay._from_sip_fast"},
    {"relay_from_webrtc", (PyCFunction)(void (*)(void))relay_from_webrtc, METH_FASTCALL, "Relay._from_webrtc_rtp"},
    {"ice_receive", (PyCFunction)(void (*)(void))ice_receive, METH_FASTCALL, "IceReceive.slow"},
    {"setup", setup, METH_VARARGS, "setup(srtp_protect address, srtp_unprotect address, State.CONNECTED)"},
    {"set_clocks", set_clocks, METH_VARARGS, "set_clocks(monotonic or None, time or None): tests' clocks"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastrelay", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fastrelay(void) {
#define INTERN(n) if ((S_##n = PyUnicode_InternFromString(#n)) == NULL) return NULL;
    NAMES(INTERN)
    if ((S_source_ts = PyUnicode_InternFromString("source_ts")) == NULL) return NULL;
    if ((S_socket_key = PyUnicode_InternFromString("socket")) == NULL) return NULL;
    return PyModule_Create(&module);
}
