/* hpcrl.comm._fastpath: the channels' per-message hot path in C (optional; hpcrl.comm.fastpath holds the
 * pure-Python equivalent and picks one at import).
 *
 * SendBase and RecvBase are base classes of SendChannel and RecvChannel. Their members ARE the channels'
 * hot state (Python code reads and writes them as ordinary attributes: self._seq, self._req, ...), so the
 * C methods below and the Python methods of the channels share one state, with no copies to keep in sync.
 *
 *   SendBase._send_fast(data, version) -> True | matcher result | None
 *       A wire-layout NamedArray (Schema.allocate_views) matching the channel's schema, whose buffer is
 *       free: write the header, Isend it, book it, return True. Anything else returns what the schema
 *       matcher returned (None if it did not run) and the Python path takes over.
 *   copy_leaves(dsts, srcs)
 *       The packing of a NamedArray that is not in wire layout: dst[...] = src per leaf, a memcpy each.
 *   RecvBase._recv_fast(spins, copy) -> Message | None
 *       Test the posted data receive up to `spins` times; a data message of an already checked batch
 *       shape is validated against the header and returned; any other completed message goes to the
 *       Python method self._complete(status, copy) (schema handshakes, first messages, every error).
 *
 * MPI is reached only through mpi4py objects (Request.Test/Start, Comm.Isend, Status.Get_count), so this
 * module has no MPI headers and no MPI ABI to match: it builds with any C compiler and Python headers.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

/* configured once from Python (hpcrl.comm.fastpath): the Message class and the wire constants */
static PyObject *Message = NULL;
static long long HEADER_NBYTES = 64;
static long long MAGIC = 0;
static long long KIND_DATA = 1;

static PyObject *s_Test, *s_Start, *s_Get_count, *s_complete, *s_wire;

/* ------------------------------------------------------------------------------------------ SendBase */
typedef struct {
    PyObject_HEAD
    PyObject *matcher;          /* _matcher: the schema's generated matcher (None before the first schema) */
    PyObject *dims;             /* _dims: {batch shape: (dim 0, dim 1, payload bytes)} */
    PyObject *wire_schema;      /* _wire_schema: a wire-layout schema found equal to the channel's */
    PyObject *borrowed;         /* _borrowed: [(request, buffer)] zero-copy sends in flight */
    PyObject *isend;            /* _isend: comm.Isend or comm.Issend */
    PyObject *byte;             /* _byte: MPI.BYTE */
    long long schema_id, seq, messages, nbytes_sent, dest, tag;
    char closed;
} SendBase;

static int send_traverse(SendBase *self, visitproc visit, void *arg) {
    Py_VISIT(self->matcher); Py_VISIT(self->dims); Py_VISIT(self->wire_schema);
    Py_VISIT(self->borrowed); Py_VISIT(self->isend); Py_VISIT(self->byte);
    return 0;
}

static int send_clear(SendBase *self) {
    Py_CLEAR(self->matcher); Py_CLEAR(self->dims); Py_CLEAR(self->wire_schema);
    Py_CLEAR(self->borrowed); Py_CLEAR(self->isend); Py_CLEAR(self->byte);
    return 0;
}

static void send_dealloc(SendBase *self) {
    PyObject_GC_UnTrack(self);
    send_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *send_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    (void)args; (void)kwds;
    SendBase *self = (SendBase *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    PyObject **objs[] = {&self->matcher, &self->dims, &self->wire_schema, &self->borrowed, &self->isend, &self->byte};
    for (size_t i = 0; i < sizeof(objs) / sizeof(objs[0]); i++) { Py_INCREF(Py_None); *objs[i] = Py_None; }
    return (PyObject *)self;
}

static int as_ll(PyObject *o, long long *out) {
    long long v = PyLong_AsLongLong(o);
    if (v == -1 && PyErr_Occurred()) return -1;
    *out = v;
    return 0;
}

/* Send a wire-layout NamedArray zero-copy if everything checks: True, or None for the general path. */
static PyObject *send_wire(SendBase *self, PyObject *wire, PyObject *batch, PyObject *leaves, PyObject *version_obj) {
    if (!PyTuple_Check(wire) || PyTuple_GET_SIZE(wire) < 5) Py_RETURN_NONE;
    if (PyTuple_GET_ITEM(wire, 1) != self->wire_schema) Py_RETURN_NONE; /* the Python path checks it once */
    int eq = PyObject_RichCompareBool(PyTuple_GET_ITEM(wire, 2), batch, Py_EQ);
    if (eq < 0) return NULL;
    if (!eq) Py_RETURN_NONE;
    long long hdr;
    if (as_ll(PyTuple_GET_ITEM(wire, 3), &hdr) < 0) return NULL;
    if (hdr != HEADER_NBYTES) Py_RETURN_NONE;
    PyObject *wl = PyTuple_GET_ITEM(wire, 4);
    if (!PyTuple_Check(wl) || PyTuple_GET_SIZE(wl) != PyList_GET_SIZE(leaves)) Py_RETURN_NONE;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(wl); i++)
        if (PyTuple_GET_ITEM(wl, i) != PyList_GET_ITEM(leaves, i)) Py_RETURN_NONE; /* a leaf was replaced */
    PyObject *dims = PyDict_GetItemWithError(self->dims, batch);
    if (dims == NULL) { if (PyErr_Occurred()) return NULL; Py_RETURN_NONE; }
    long long d0, d1, nbytes, version;
    if (!PyTuple_Check(dims) || PyTuple_GET_SIZE(dims) != 3) Py_RETURN_NONE;
    if (as_ll(PyTuple_GET_ITEM(dims, 0), &d0) < 0 || as_ll(PyTuple_GET_ITEM(dims, 1), &d1) < 0 ||
        as_ll(PyTuple_GET_ITEM(dims, 2), &nbytes) < 0)
        return NULL;
    /* the buffer must be free: no zero-copy send in flight, or one that has completed */
    Py_ssize_t nb = PyList_GET_SIZE(self->borrowed);
    if (nb > 1) Py_RETURN_NONE;
    if (nb == 1) {
        PyObject *pair = PyList_GET_ITEM(self->borrowed, 0);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) Py_RETURN_NONE;
        PyObject *done = PyObject_CallMethodNoArgs(PyTuple_GET_ITEM(pair, 0), s_Test);
        if (done == NULL) return NULL;
        int ok = PyObject_IsTrue(done);
        Py_DECREF(done);
        if (ok < 0) return NULL;
        if (!ok) Py_RETURN_NONE;
        if (PyList_SetSlice(self->borrowed, 0, 1, NULL) < 0) return NULL;
    }
    PyObject *vi = PyNumber_Long(version_obj); /* int(version), as the Python path */
    if (vi == NULL) return NULL;
    int bad = as_ll(vi, &version);
    Py_DECREF(vi);
    if (bad < 0) return NULL;
    PyObject *raw = PyTuple_GET_ITEM(wire, 0);
    Py_buffer view;
    if (PyObject_GetBuffer(raw, &view, PyBUF_WRITABLE) < 0) return NULL;
    if (view.len < HEADER_NBYTES + nbytes) {
        PyBuffer_Release(&view);
        Py_RETURN_NONE; /* cannot happen for allocate_views buffers; the Python path reports it */
    }
    int64_t header[8] = {MAGIC, KIND_DATA, self->schema_id, d0, d1, version, self->seq, nbytes};
    memcpy(view.buf, header, sizeof(header));
    PyBuffer_Release(&view);
    PyObject *spec = Py_BuildValue("[OLO]", raw, HEADER_NBYTES + nbytes, self->byte);
    if (spec == NULL) return NULL;
    PyObject *dest = PyLong_FromLongLong(self->dest), *tag = PyLong_FromLongLong(self->tag);
    PyObject *req = NULL;
    if (dest != NULL && tag != NULL) {
        PyObject *call[3] = {spec, dest, tag};
        req = PyObject_Vectorcall(self->isend, call, 3, NULL);
    }
    Py_DECREF(spec); Py_XDECREF(dest); Py_XDECREF(tag);
    if (req == NULL) return NULL;
    PyObject *pair = PyTuple_Pack(2, req, raw);
    Py_DECREF(req);
    if (pair == NULL) return NULL;
    int err = PyList_Append(self->borrowed, pair);
    Py_DECREF(pair);
    if (err < 0) return NULL;
    self->seq += 1;
    self->messages += 1;
    self->nbytes_sent += nbytes;
    Py_RETURN_TRUE;
}


static PyObject *send_fast(SendBase *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) { PyErr_SetString(PyExc_TypeError, "_send_fast(data, version)"); return NULL; }
    PyObject *data = args[0];
    if (self->closed || self->matcher == Py_None) Py_RETURN_NONE;
    PyObject *got = PyObject_CallOneArg(self->matcher, data);
    if (got == NULL) return NULL;
    if (!PyTuple_Check(got) || PyTuple_GET_SIZE(got) != 2) return got; /* None: not proven equal */
    PyObject *batch = PyTuple_GET_ITEM(got, 0), *leaves = PyTuple_GET_ITEM(got, 1);
    if (!PyList_Check(leaves) || !PyDict_Check(self->dims) || !PyList_Check(self->borrowed)) return got;
    /* a wire-layout NamedArray: data.__dict__["_wire"] = (raw, schema, batch, header bytes, leaves) */
    PyObject *ddict = PyObject_GenericGetDict(data, NULL);
    if (ddict == NULL) goto fail;
    PyObject *wire = PyDict_GetItemWithError(ddict, s_wire);
    Py_XINCREF(wire); /* owned: the calls below run Python code */
    Py_DECREF(ddict);
    if (wire == NULL) { if (PyErr_Occurred()) goto fail; return got; }
    PyObject *result = send_wire(self, wire, batch, leaves, args[1]);
    Py_DECREF(wire);
    if (result == NULL) goto fail;
    if (result == Py_True) { Py_DECREF(got); return result; }
    Py_DECREF(result); /* Py_None: not this path */
    return got;
fail:
    Py_DECREF(got);
    return NULL;
}

static PyMemberDef send_members[] = {
    {"_matcher", T_OBJECT_EX, offsetof(SendBase, matcher), 0, "the schema's matcher"},
    {"_dims", T_OBJECT_EX, offsetof(SendBase, dims), 0, "batch shape -> (dim 0, dim 1, payload bytes)"},
    {"_wire_schema", T_OBJECT_EX, offsetof(SendBase, wire_schema), 0, "wire-layout schema equal to the channel's"},
    {"_borrowed", T_OBJECT_EX, offsetof(SendBase, borrowed), 0, "zero-copy sends in flight"},
    {"_isend", T_OBJECT_EX, offsetof(SendBase, isend), 0, "Isend or Issend"},
    {"_byte", T_OBJECT_EX, offsetof(SendBase, byte), 0, "MPI.BYTE"},
    {"_schema_id", T_LONGLONG, offsetof(SendBase, schema_id), 0, "current schema id"},
    {"_seq", T_LONGLONG, offsetof(SendBase, seq), 0, "next sequence number"},
    {"messages", T_LONGLONG, offsetof(SendBase, messages), 0, "Data messages sent so far."},
    {"bytes", T_LONGLONG, offsetof(SendBase, nbytes_sent), 0, "Payload bytes sent so far."},
    {"dest", T_LONGLONG, offsetof(SendBase, dest), 0, "the receiving rank"},
    {"tag", T_LONGLONG, offsetof(SendBase, tag), 0, "the data tag"},
    {"_closed", T_BOOL, offsetof(SendBase, closed), 0, "closed"},
    {NULL}};

static PyMethodDef send_methods[] = {
    {"_send_fast", (PyCFunction)(void (*)(void))send_fast, METH_FASTCALL, "zero-copy send fast path"},
    {NULL}};

static PyTypeObject SendBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "hpcrl.comm._fastpath.SendBase",
    .tp_basicsize = sizeof(SendBase),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Hot state and fast path of SendChannel (C).",
    .tp_new = send_new,
    .tp_dealloc = (destructor)send_dealloc,
    .tp_traverse = (traverseproc)send_traverse,
    .tp_clear = (inquiry)send_clear,
    .tp_members = send_members,
    .tp_methods = send_methods,
};

/* ------------------------------------------------------------------------------------------ RecvBase */
typedef struct {
    PyObject_HEAD
    PyObject *req;          /* _req: the posted receive, or None */
    PyObject *status;       /* _status: scratch MPI.Status */
    PyObject *bufs;         /* _bufs: receive buffers (uint8 arrays) */
    PyObject *preqs;        /* _preqs: one persistent receive per buffer */
    PyObject *views;        /* _views: {(buffer, dim 0, dim 1): (batch shape, payload bytes, leaf views)} */
    PyObject *view_builder; /* _view_builder: leaf views -> NamedArray of fresh views */
    PyObject *byte;         /* _byte: MPI.BYTE */
    long long req_buf, schema_id, next_seq, nbuffers, user_buf, messages, nbytes_received, last_nbytes, source;
    char allow_gaps;
} RecvBase;

static int recv_traverse(RecvBase *self, visitproc visit, void *arg) {
    Py_VISIT(self->req); Py_VISIT(self->status); Py_VISIT(self->bufs); Py_VISIT(self->preqs);
    Py_VISIT(self->views); Py_VISIT(self->view_builder); Py_VISIT(self->byte);
    return 0;
}

static int recv_clear(RecvBase *self) {
    Py_CLEAR(self->req); Py_CLEAR(self->status); Py_CLEAR(self->bufs); Py_CLEAR(self->preqs);
    Py_CLEAR(self->views); Py_CLEAR(self->view_builder); Py_CLEAR(self->byte);
    return 0;
}

static void recv_dealloc(RecvBase *self) {
    PyObject_GC_UnTrack(self);
    recv_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *recv_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    (void)args; (void)kwds;
    RecvBase *self = (RecvBase *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    PyObject **objs[] = {&self->req, &self->status, &self->bufs, &self->preqs, &self->views, &self->view_builder, &self->byte};
    for (size_t i = 0; i < sizeof(objs) / sizeof(objs[0]); i++) { Py_INCREF(Py_None); *objs[i] = Py_None; }
    self->req_buf = -1;
    self->user_buf = -1;
    return (PyObject *)self;
}

static void set_obj(PyObject **slot, PyObject *value) {
    PyObject *old = *slot;
    Py_INCREF(value);
    *slot = value;
    Py_XDECREF(old);
}

static PyObject *recv_message(RecvBase *self, PyObject *cached, long long idx, const int64_t *h, int *error);

/* The completed message in buffer idx, if it is a data message of a checked batch shape (else NULL, no error). */
static PyObject *recv_decode(RecvBase *self, long long idx, long long count, int *error) {
    *error = 0;
    if (!PyList_Check(self->bufs) || idx >= PyList_GET_SIZE(self->bufs) || !PyDict_Check(self->views)) return NULL;
    if (count < HEADER_NBYTES) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(PyList_GET_ITEM(self->bufs, idx), &view, PyBUF_SIMPLE) < 0) { *error = 1; return NULL; }
    int64_t h[8];
    if (view.len < (Py_ssize_t)sizeof(h)) { PyBuffer_Release(&view); return NULL; }
    memcpy(h, view.buf, sizeof(h));
    PyBuffer_Release(&view);
    long long seq = h[6], nbytes = h[7];
    if (h[0] != MAGIC || h[1] != KIND_DATA || h[2] != self->schema_id) return NULL;
    if (!(seq == self->next_seq || (self->allow_gaps && seq > self->next_seq))) return NULL;
    if (count - HEADER_NBYTES != nbytes) return NULL;
    PyObject *key = Py_BuildValue("(LLL)", idx, (long long)h[3], (long long)h[4]);
    if (key == NULL) { *error = 1; return NULL; }
    PyObject *cached = PyDict_GetItemWithError(self->views, key);
    Py_DECREF(key);
    if (cached == NULL) { *error = PyErr_Occurred() != NULL; return NULL; }
    if (!PyTuple_Check(cached) || PyTuple_GET_SIZE(cached) != 3) return NULL;
    long long expect;
    if (as_ll(PyTuple_GET_ITEM(cached, 1), &expect) < 0) { *error = 1; return NULL; }
    if (expect != nbytes) return NULL;
    Py_INCREF(cached); /* owned from here: the calls below run Python code */
    PyObject *msg = recv_message(self, cached, idx, h, error);
    Py_DECREF(cached);
    return msg;
}

/* Build the Message for checked header h in buffer idx with the cached (batch shape, bytes, leaf views). */
static PyObject *recv_message(RecvBase *self, PyObject *cached, long long idx, const int64_t *h, int *error) {
    long long seq = h[6], nbytes = h[7];
    PyObject *data = PyObject_CallOneArg(self->view_builder, PyTuple_GET_ITEM(cached, 2));
    if (data == NULL) { *error = 1; return NULL; }
    self->next_seq = seq + 1;
    self->user_buf = idx;
    self->messages += 1;
    self->nbytes_received += nbytes;
    self->last_nbytes = nbytes;
    if (self->nbuffers > 1) { /* repost into the other buffer */
        long long other = 1 - idx;
        if (!PyList_Check(self->preqs) || other < 0 || other >= PyList_GET_SIZE(self->preqs)) {
            Py_DECREF(data);
            PyErr_SetString(PyExc_RuntimeError, "hpcrl channel: persistent receives missing");
            *error = 1;
            return NULL;
        }
        PyObject *next = PyList_GET_ITEM(self->preqs, other);
        PyObject *r = PyObject_CallMethodNoArgs(next, s_Start);
        if (r == NULL) { Py_DECREF(data); *error = 1; return NULL; }
        Py_DECREF(r);
        set_obj(&self->req, next);
        self->req_buf = other;
    }
    PyObject *version = PyLong_FromLongLong(h[5]), *pseq = PyLong_FromLongLong(seq);
    PyObject *source = PyLong_FromLongLong(self->source), *msg = NULL;
    if (version != NULL && pseq != NULL && source != NULL) {
        PyObject *call[5] = {data, PyTuple_GET_ITEM(cached, 0), version, pseq, source};
        msg = PyObject_Vectorcall(Message, call, 5, NULL);
    }
    Py_DECREF(data); Py_XDECREF(version); Py_XDECREF(pseq); Py_XDECREF(source);
    if (msg == NULL) *error = 1;
    return msg;
}

static PyObject *recv_fast(RecvBase *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) { PyErr_SetString(PyExc_TypeError, "_recv_fast(spins, copy)"); return NULL; }
    long long spins;
    if (as_ll(args[0], &spins) < 0) return NULL;
    int copy = PyObject_IsTrue(args[1]);
    if (copy < 0) return NULL;
    PyObject *req = self->req;
    if (req == Py_None || self->req_buf < 0) Py_RETURN_NONE;
    Py_INCREF(req);
    int done = 0;
    for (long long i = 0; i < spins && !done; i++) {
        PyObject *r = PyObject_CallMethodOneArg(req, s_Test, self->status);
        if (r == NULL) { Py_DECREF(req); return NULL; }
        done = PyObject_IsTrue(r);
        Py_DECREF(r);
        if (done < 0) { Py_DECREF(req); return NULL; }
    }
    Py_DECREF(req);
    if (!done) Py_RETURN_NONE;
    set_obj(&self->req, Py_None);
    if (!copy) {
        PyObject *c = PyObject_CallMethodOneArg(self->status, s_Get_count, self->byte);
        if (c == NULL) return NULL;
        long long count;
        int bad = as_ll(c, &count);
        Py_DECREF(c);
        if (bad < 0) return NULL;
        int error;
        PyObject *msg = recv_decode(self, self->req_buf, count, &error);
        if (msg != NULL || error) return msg;
    }
    /* anything else (handshake, new batch shape, malformed): the Python path checks and reports it */
    return PyObject_CallMethodObjArgs((PyObject *)self, s_complete, self->status, copy ? Py_True : Py_False, NULL);
}

static PyMemberDef recv_members[] = {
    {"_req", T_OBJECT_EX, offsetof(RecvBase, req), 0, "the posted receive"},
    {"_status", T_OBJECT_EX, offsetof(RecvBase, status), 0, "scratch status"},
    {"_bufs", T_OBJECT_EX, offsetof(RecvBase, bufs), 0, "receive buffers"},
    {"_preqs", T_OBJECT_EX, offsetof(RecvBase, preqs), 0, "persistent receives"},
    {"_views", T_OBJECT_EX, offsetof(RecvBase, views), 0, "checked batch shapes"},
    {"_view_builder", T_OBJECT_EX, offsetof(RecvBase, view_builder), 0, "NamedArray builder"},
    {"_byte", T_OBJECT_EX, offsetof(RecvBase, byte), 0, "MPI.BYTE"},
    {"_req_buf", T_LONGLONG, offsetof(RecvBase, req_buf), 0, "buffer of the posted receive"},
    {"_schema_id", T_LONGLONG, offsetof(RecvBase, schema_id), 0, "current schema id"},
    {"_next_seq", T_LONGLONG, offsetof(RecvBase, next_seq), 0, "expected sequence number"},
    {"nbuffers", T_LONGLONG, offsetof(RecvBase, nbuffers), 0, "receive buffers (1 or 2)"},
    {"_user_buf", T_LONGLONG, offsetof(RecvBase, user_buf), 0, "buffer of the last message handed out"},
    {"messages", T_LONGLONG, offsetof(RecvBase, messages), 0, "Data messages received so far."},
    {"bytes", T_LONGLONG, offsetof(RecvBase, nbytes_received), 0, "Payload bytes received so far."},
    {"_last_nbytes", T_LONGLONG, offsetof(RecvBase, last_nbytes), 0, "payload bytes of the last message"},
    {"source", T_LONGLONG, offsetof(RecvBase, source), 0, "the sending rank"},
    {"allow_gaps", T_BOOL, offsetof(RecvBase, allow_gaps), 0, "accept sequence gaps"},
    {NULL}};

static PyMethodDef recv_methods[] = {
    {"_recv_fast", (PyCFunction)(void (*)(void))recv_fast, METH_FASTCALL, "receive fast path"},
    {NULL}};

static PyTypeObject RecvBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "hpcrl.comm._fastpath.RecvBase",
    .tp_basicsize = sizeof(RecvBase),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Hot state and fast path of RecvChannel (C).",
    .tp_new = recv_new,
    .tp_dealloc = (destructor)recv_dealloc,
    .tp_traverse = (traverseproc)recv_traverse,
    .tp_clear = (inquiry)recv_clear,
    .tp_members = recv_members,
    .tp_methods = recv_methods,
};

/* ------------------------------------------------------------------------------------------ module */
static PyObject *np_copyto = NULL; /* numpy.copyto, for any pair memcpy cannot take */

/* copy_leaves(dsts, srcs): dst[...] = src for each pair; a memcpy where both are C-contiguous buffers of
 * the same size (the matcher has checked dtypes and shapes), else numpy.copyto. */
static PyObject *copy_leaves(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    (void)mod;
    if (nargs != 2 || !PyList_Check(args[0]) || !PyList_Check(args[1]) ||
        PyList_GET_SIZE(args[0]) != PyList_GET_SIZE(args[1])) {
        PyErr_SetString(PyExc_TypeError, "copy_leaves(dsts: list, srcs: list) of equal lengths");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(args[0]); i++) {
        PyObject *dst = PyList_GET_ITEM(args[0], i), *src = PyList_GET_ITEM(args[1], i);
        Py_buffer d, s;
        int fast = 0;
        if (PyObject_GetBuffer(dst, &d, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) == 0) {
            if (PyObject_GetBuffer(src, &s, PyBUF_C_CONTIGUOUS) == 0) {
                if (s.len == d.len) {
                    memmove(d.buf, s.buf, (size_t)d.len); /* memmove: overlap is never expected, but safe */
                    fast = 1;
                }
                PyBuffer_Release(&s);
            } else {
                PyErr_Clear();
            }
            PyBuffer_Release(&d);
        } else {
            PyErr_Clear();
        }
        if (fast) continue;
        if (np_copyto == NULL) {
            PyErr_SetString(PyExc_RuntimeError, "hpcrl.comm._fastpath: configure() was not called");
            return NULL;
        }
        PyObject *call[2] = {dst, src};
        PyObject *r = PyObject_Vectorcall(np_copyto, call, 2, NULL);
        if (r == NULL) return NULL;
        Py_DECREF(r);
    }
    Py_RETURN_NONE;
}

static PyObject *configure(PyObject *mod, PyObject *args) {
    (void)mod;
    PyObject *message, *copyto;
    long long header, magic, kind_data;
    if (!PyArg_ParseTuple(args, "OLLLO", &message, &header, &magic, &kind_data, &copyto)) return NULL;
    Py_INCREF(message);
    Py_XSETREF(Message, message);
    Py_INCREF(copyto);
    Py_XSETREF(np_copyto, copyto);
    HEADER_NBYTES = header;
    MAGIC = magic;
    KIND_DATA = kind_data;
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"configure", configure, METH_VARARGS, "configure(Message, header_nbytes, magic, kind_data, numpy.copyto)"},
    {"copy_leaves", (PyCFunction)(void (*)(void))copy_leaves, METH_FASTCALL, "dst[...] = src for each pair"},
    {NULL}};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "_fastpath", "hpcrl channel hot path (C)", -1,
                                       module_methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__fastpath(void) {
    s_Test = PyUnicode_InternFromString("Test");
    s_Start = PyUnicode_InternFromString("Start");
    s_Get_count = PyUnicode_InternFromString("Get_count");
    s_complete = PyUnicode_InternFromString("_complete");
    s_wire = PyUnicode_InternFromString("_wire");
    if (!s_Test || !s_Start || !s_Get_count || !s_complete || !s_wire) return NULL;
    if (PyType_Ready(&SendBaseType) < 0 || PyType_Ready(&RecvBaseType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (m == NULL) return NULL;
    Py_INCREF(&SendBaseType);
    Py_INCREF(&RecvBaseType);
    if (PyModule_AddObject(m, "SendBase", (PyObject *)&SendBaseType) < 0 ||
        PyModule_AddObject(m, "RecvBase", (PyObject *)&RecvBaseType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
