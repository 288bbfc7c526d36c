/* heapemu's direct calls into Unicorn's C API from Python: a CPython extension module
 * (emu/cpu/native.py builds it with the host's C compiler and the running Python's headers,
 * and the CPU uses ctypes instead when it cannot).
 *
 * Why: a ctypes call with a prototype costs ~0.6 µs before the C function runs (measured:
 * uc_emu_start of a 10-instruction call, 0.89 µs through ctypes, 0.27 µs through this module),
 * and the CPU makes several per proc.call and per system call (the run, register reads and
 * writes, reads of the arguments' memory). A METH_FASTCALL function converts its integer
 * arguments in a few nanoseconds each.
 *
 * No Unicorn headers: the functions are Unicorn's own, handed in by address once (``bind``),
 * with their signatures restated here. uc_emu_start releases the GIL, as ctypes does (the
 * watchdog thread must run while emulated code does, and Python hooks take it back); the
 * others keep it (the only callbacks they can cause run in this thread). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef int (*emu_start_fn)(void *uc, uint64_t begin, uint64_t until, uint64_t timeout,
                            size_t count);
typedef int (*reg_fn)(void *uc, int regid, void *value);
typedef int (*mem_read_fn)(void *uc, uint64_t address, void *bytes, uint64_t size);
typedef int (*mem_write_fn)(void *uc, uint64_t address, const void *bytes, uint64_t size);
typedef int (*reg_batch_fn)(void *uc, int *regs, void **vals, int count);
typedef int (*reg_write_batch_fn)(void *uc, int *regs, void *const *vals, int count);
typedef int (*ctl_fn)(void *uc, int control, ...);

static emu_start_fn emu_start_;
static reg_fn reg_read_, reg_write_;
static mem_read_fn mem_read_;
static mem_write_fn mem_write_;
static reg_batch_fn reg_read_batch_;
static reg_write_batch_fn reg_write_batch_;
static ctl_fn ctl_;

static int check_args(Py_ssize_t n, Py_ssize_t want, const char *usage) {
    if (n != want) {
        PyErr_Format(PyExc_TypeError, "%s takes %zd arguments (%zd given)", usage, want, n);
        return -1;
    }
    return 0;
}

static uint64_t u64(PyObject *o) { return PyLong_AsUnsignedLongLongMask(o); }

static PyObject *bind(PyObject *self, PyObject *const *args, Py_ssize_t n) {
    (void)self;
    if (check_args(n, 8, "bind(emu_start, reg_read, reg_write, mem_read, mem_write, "
                         "reg_read_batch, reg_write_batch, ctl)"))
        return NULL;
    void *p[8];
    for (int i = 0; i < 8; i++) {
        p[i] = PyLong_AsVoidPtr(args[i]);
        if (!p[i]) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "a null function address");
            return NULL;
        }
    }
    emu_start_ = (emu_start_fn)p[0];
    reg_read_ = (reg_fn)p[1];
    reg_write_ = (reg_fn)p[2];
    mem_read_ = (mem_read_fn)p[3];
    mem_write_ = (mem_write_fn)p[4];
    reg_read_batch_ = (reg_batch_fn)p[5];
    reg_write_batch_ = (reg_write_batch_fn)p[6];
    ctl_ = (ctl_fn)p[7];
    Py_RETURN_NONE;
}

#define NEED_BOUND()                                                                        \
    if (!emu_start_) {                                                                      \
        PyErr_SetString(PyExc_RuntimeError, "bind() was not called");                       \
        return NULL;                                                                        \
    }

/* emu_start(uc, begin, until, timeout, count) -> status */
static PyObject *emu_start(PyObject *self, PyObject *const *args, Py_ssize_t n) {
    (void)self;
    if (check_args(n, 5, "emu_start(uc, begin, until, timeout, count)"))
        return NULL;
    NEED_BOUND();
    void *uc = PyLong_AsVoidPtr(args[0]);
    uint64_t begin = u64(args[1]), until = u64(args[2]), timeout = u64(args[3]);
    uint64_t count = u64(args[4]);
    if (PyErr_Occurred())
        return NULL;
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = emu_start_(uc, begin, until, timeout, (size_t)count);
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(status);
}

/* reg_read(uc, regid) -> value (registers up to 64 bits; narrower ones zero-extended) */
static PyObject *reg_read(PyObject *self, PyObject *const *args, Py_ssize_t n) {
    (void)self;
    if (check_args(n, 2, "reg_read(uc, regid)"))
        return NULL;
    NEED_BOUND();
    void *uc = PyLong_AsVoidPtr(args[0]);
    long regid = PyLong_AsLong(args[1]);
    if (PyErr_Occurred())
        return NULL;
    uint64_t value[8] = {0}; /* room for any register read by mistake (a ymm, a GDTR) */
    reg_read_(uc, (int)regid, value);
    return PyLong_FromUnsignedLongLong(value[0]);
}

/* reg_write(uc, regid, value) -> status */
static PyObject *reg_write(PyObject *self, PyObject *const *args, Py_ssize_t n) {
    (void)self;
    if (check_args(n, 3, "reg_write(uc, regid, value)"))
        return NULL;
    NEED_BOUND();
    void *uc = PyLong_AsVoidPtr(args[0]);
    long regid = PyLong_AsLong(args[1]);
    uint64_t value[8] = {u64(args[2])};
    if (PyErr_Occurred())
        return NULL;
    return PyLong_FromLong(reg_write_(uc, (int)regid, value));
}

/* mem_read(uc, address, size) -> bytes, or the status (an int) when it failed */
static PyObject *mem_read(PyObject *self, PyObject *const *args, Py_ssize_t n) {
    (void)self;
    if (check_args(n, 3, "mem_read(uc, address, size)"))
        return NULL;
    NEED_BOUND();
    void *uc = PyLong_AsVoidPtr(args[0]);
    uint64_t address = u64(args[1]);
    Py_ssize_t size = PyLong_AsSsize_t(args[2]);
    if (PyErr_Occurred())
        return NULL;
    if (size < 0) {
        PyErr_SetString(PyExc_ValueError, "negative size");
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, size);
    if (!out)
        return NULL;
    int status = size ? mem_read_(uc, address, PyBytes_AS_STRING(out), (uint64_t)size) : 0;
    if (status) {
        Py_DECREF(out);
        return PyLong_FromLong(status);
    }
    return out;
}

/* read_into(uc, address, buffer_address, size) -> True when all of it was readable */
static PyObject *read_into(PyObject *self, PyObject *const *args, Py_ssize_t n) {
    (void)self;
    if (check_args(n, 4, "read_into(uc, address, buffer_address, size)"))
        return NULL;
    NEED_BOUND();
    void *uc = PyLong_AsVoidPtr(args[0]);
    uint64_t address = u64(args[1]);
    void *buf = PyLong_AsVoidPtr(args[2]);
    uint64_t size = u64(args[3]);
    if (PyErr_Occurred())
        return NULL;
    return PyBool_FromLong(!mem_read_(uc, address, buf, size));
}

/* mem_write(uc, address, data) -> status (data: any contiguous buffer) */
static PyObject *mem_write(PyObject *self, PyObject *const *args, Py_ssize_t n) {
    (void)self;
    if (check_args(n, 3, "mem_write(uc, address, data)"))
        return NULL;
    NEED_BOUND();
    void *uc = PyLong_AsVoidPtr(args[0]);
    uint64_t address = u64(args[1]);
    if (PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[2], &view, PyBUF_SIMPLE))
        return NULL;
    int status = view.len ? mem_write_(uc, address, view.buf, (uint64_t)view.len) : 0;
    PyBuffer_Release(&view);
    return PyLong_FromLong(status);
}

/* read_batch(uc, ids_address, ptrs_address, count) -> status (ctypes arrays' addresses) */
static PyObject *read_batch(PyObject *self, PyObject *const *args, Py_ssize_t n) {
    (void)self;
    if (check_args(n, 4, "read_batch(uc, ids_address, ptrs_address, count)"))
        return NULL;
    NEED_BOUND();
    void *uc = PyLong_AsVoidPtr(args[0]);
    int *ids = PyLong_AsVoidPtr(args[1]);
    void **ptrs = PyLong_AsVoidPtr(args[2]);
    long count = PyLong_AsLong(args[3]);
    if (PyErr_Occurred())
        return NULL;
    return PyLong_FromLong(reg_read_batch_(uc, ids, ptrs, (int)count));
}

/* write_batch(uc, ids_address, ptrs_address, count) -> status */
static PyObject *write_batch(PyObject *self, PyObject *const *args, Py_ssize_t n) {
    (void)self;
    if (check_args(n, 4, "write_batch(uc, ids_address, ptrs_address, count)"))
        return NULL;
    NEED_BOUND();
    void *uc = PyLong_AsVoidPtr(args[0]);
    int *ids = PyLong_AsVoidPtr(args[1]);
    void *const *ptrs = PyLong_AsVoidPtr(args[2]);
    long count = PyLong_AsLong(args[3]);
    if (PyErr_Occurred())
        return NULL;
    return PyLong_FromLong(reg_write_batch_(uc, ids, ptrs, (int)count));
}

/* ctl(uc, control) -> status: a uc_ctl that takes no further arguments (a TLB flush) */
static PyObject *ctl(PyObject *self, PyObject *const *args, Py_ssize_t n) {
    (void)self;
    if (check_args(n, 2, "ctl(uc, control)"))
        return NULL;
    NEED_BOUND();
    void *uc = PyLong_AsVoidPtr(args[0]);
    long control = PyLong_AsLong(args[1]);
    if (PyErr_Occurred())
        return NULL;
    return PyLong_FromLong(ctl_(uc, (int)control));
}

#define FAST(name) {#name, (PyCFunction)(void (*)(void))name, METH_FASTCALL, NULL}
static PyMethodDef methods[] = {
    FAST(bind),     FAST(emu_start), FAST(reg_read),   FAST(reg_write),
    FAST(mem_read), FAST(read_into), FAST(mem_write),  FAST(read_batch),
    FAST(write_batch), FAST(ctl),
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_heapemu_direct", "Direct calls into Unicorn's C API.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__heapemu_direct(void) { return PyModule_Create(&module); }
