#ifndef BOTTLENECK_CHDF5_SHIM_H
#define BOTTLENECK_CHDF5_SHIM_H
#include <hdf5.h>
#include <hdf5_hl.h>
#include <string.h>

/* HDF5's type ids and property-list classes are macros that expand to
   library globals initialised by H5open(); Swift cannot import them, so
   each becomes a function. H5P_DEFAULT and H5S_ALL import as Int32, not
   hid_t, hence the typed constants. */
static inline hid_t bn_H5P_DEFAULT(void) { return H5P_DEFAULT; }
static inline hid_t bn_H5S_ALL(void) { return H5S_ALL; }
static inline hid_t bn_H5T_NATIVE_FLOAT(void) { return H5T_NATIVE_FLOAT; }
static inline hid_t bn_H5T_NATIVE_DOUBLE(void) { return H5T_NATIVE_DOUBLE; }
static inline hid_t bn_H5T_NATIVE_INT32(void) { return H5T_NATIVE_INT32; }
static inline hid_t bn_H5T_NATIVE_INT64(void) { return H5T_NATIVE_INT64; }
static inline hid_t bn_H5T_NATIVE_UINT8(void) { return H5T_NATIVE_UINT8; }
static inline hid_t bn_H5T_NATIVE_UINT64(void) { return H5T_NATIVE_UINT64; }
static inline hid_t bn_H5T_NATIVE_UINT16(void) { return H5T_NATIVE_UINT16; }
static inline hid_t bn_H5T_IEEE_F16LE(void) {
#ifdef H5T_IEEE_F16LE
    return H5T_IEEE_F16LE;
#else
    return -1;
#endif
}
static inline hid_t bn_H5T_C_S1(void) { return H5T_C_S1; }
static inline hid_t bn_H5T_STD_I32LE(void) { return H5T_STD_I32LE; }
static inline hid_t bn_H5T_IEEE_F32LE(void) { return H5T_IEEE_F32LE; }
static inline hid_t bn_H5T_IEEE_F64LE(void) { return H5T_IEEE_F64LE; }
static inline hid_t bn_H5T_STD_I64LE(void) { return H5T_STD_I64LE; }
static inline hid_t bn_H5T_STD_U8LE(void) { return H5T_STD_U8LE; }
static inline hid_t bn_H5T_STD_U64LE(void) { return H5T_STD_U64LE; }
static inline hid_t bn_H5E_DEFAULT(void) { return H5E_DEFAULT; }

/* Frees the strings H5Dread/H5Aread allocated for variable-length string
   buffers; the function was renamed in HDF5 1.12. */
static inline herr_t bn_vlen_reclaim(hid_t type_id, hid_t space_id, void *buffer) {
#if H5_VERSION_GE(1, 12, 0)
    return H5Treclaim(type_id, space_id, H5P_DEFAULT, buffer);
#else
    return H5Dvlen_reclaim(type_id, space_id, H5P_DEFAULT, buffer);
#endif
}
static inline hid_t bn_H5P_DATASET_CREATE(void) { return H5P_DATASET_CREATE; }
static inline hid_t bn_H5P_FILE_ACCESS(void) { return H5P_FILE_ACCESS; }
static inline hid_t bn_H5P_LINK_CREATE(void) { return H5P_LINK_CREATE; }
static inline hid_t bn_H5P_DATASET_XFER(void) { return H5P_DATASET_XFER; }
static inline unsigned bn_H5F_ACC_TRUNC(void) { return H5F_ACC_TRUNC; }
static inline unsigned bn_H5F_ACC_EXCL(void) { return H5F_ACC_EXCL; }
static inline unsigned bn_H5F_ACC_RDONLY(void) { return H5F_ACC_RDONLY; }
static inline unsigned bn_H5F_ACC_RDWR(void) { return H5F_ACC_RDWR; }
static inline hsize_t bn_H5S_UNLIMITED(void) { return H5S_UNLIMITED; }
static inline size_t bn_H5T_VARIABLE(void) { return H5T_VARIABLE; }

/* HDF5 prints a stack trace to stderr on every failed call by default;
   the tool reports its own one-line errors instead. */
static inline void bn_h5_silence_errors(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }
/* An object's identity within the open files: the file number and the object's address (1.10) or
   token (1.12 and later), so a walk recognises an object it reached before through another link. */
static inline herr_t bn_object_identity(hid_t object, unsigned long *file_number, unsigned char identity[16]) {
    memset(identity, 0, 16);
#if H5_VERSION_GE(1, 12, 0)
    H5O_info2_t info;
    if (H5Oget_info3(object, &info, H5O_INFO_BASIC) < 0) return -1;
    memcpy(identity, &info.token, sizeof info.token < 16 ? sizeof info.token : 16);
#else
    H5O_info_t info;
    if (H5Oget_info2(object, &info, H5O_INFO_BASIC) < 0) return -1;
    memcpy(identity, &info.addr, sizeof info.addr);
#endif
    *file_number = info.fileno;
    return 0;
}

/* The kind of the link `name` in `group` (H5L_TYPE_HARD, _SOFT, _EXTERNAL), without following it; -1 on failure. */
static inline int bn_link_type(hid_t group, const char *name) {
#if H5_VERSION_GE(1, 12, 0)
    H5L_info2_t info;
    if (H5Lget_info2(group, name, &info, H5P_DEFAULT) < 0) return -1;
#else
    H5L_info_t info;
    if (H5Lget_info(group, name, &info, H5P_DEFAULT) < 0) return -1;
#endif
    return (int)info.type;
}

#endif
