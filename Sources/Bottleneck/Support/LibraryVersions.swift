import CHDF5
import CJPEG
import CPNG
import BottleneckKernels

/// Versions of the C libraries this build runs with, for `doctor` and for run records.
package enum LibraryVersions {
    package static var hdf5: String {
        var (major, minor, release): (UInt32, UInt32, UInt32) = (0, 0, 0)
        H5get_libversion(&major, &minor, &release)
        return "\(major).\(minor).\(release)"
    }

    /// libjpeg-turbo has no run-time version call before 3.0; this is the header the build used.
    package static var libjpeg: String {
        let number = Int(LIBJPEG_TURBO_VERSION_NUMBER)
        return "libjpeg-turbo \(number / 1_000_000).\(number / 1000 % 1000).\(number % 1000) (libjpeg API \(JPEG_LIB_VERSION))"
    }

    package static var libpng: String { String(cString: png_get_libpng_ver(nil)) }
}
