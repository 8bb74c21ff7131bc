#ifndef BOTTLENECK_CHDF5_PROBE_H
#define BOTTLENECK_CHDF5_PROBE_H
#include <hdf5.h>
#include <stddef.h>

/* What reading an HDF5 file's whole structure in a child process came to; every outcome but BN_PROBE_READ
   leaves a sentence in `message`. */
enum bn_probe_outcome {
    /* Every object, link list, attribute and dataset layout read. */
    BN_PROBE_READ = 0,
    /* libhdf5 refused part of it. */
    BN_PROBE_REFUSED = 1,
    /* The child died: libhdf5 crashed on the file (a sanitizer may turn the signal into an exit status). */
    BN_PROBE_CRASHED = 2,
    /* The child did not finish within the time allowed (libhdf5 loops forever on some damage) and was killed. */
    BN_PROBE_TIMED_OUT = 3,
    /* No child could be started. */
    BN_PROBE_UNAVAILABLE = 4,
};

/* Opens `path` read-only in a forked child and walks everything bottleneck's readers will touch: every object
   reachable by hard links (H5Ovisit, which notes the objects it has seen), each group's link list, each
   object's attributes, each dataset's dataspace, type, creation properties and stored size. libhdf5 1.10 has
   crashes of its own on damaged metadata (reads from address 0, multi-gigabyte mallocs of sizes read from
   the file); in the child they cost the child, not the job. */
enum bn_probe_outcome bn_probe_hdf5_structure(const char *path, int timeout_seconds, char *message, size_t message_size);

/* Calls `visit` with the name of each link in `group`, in name order, through H5Literate: H5Gget_info's count
   of an old-style group walks its B-tree without the checks H5Literate makes, and a damaged node crashes
   libhdf5 1.10.8 there (Fuzz/ found one). The probe's walk and bottleneck's own group listing both use this,
   so a file the probe read whole is one the listing reads. */
typedef int (*bn_link_name_visitor)(const char *name, void *client);
herr_t bn_visit_link_names(hid_t group, bn_link_name_visitor visit, void *client);

#endif
