!> Status codes returned in `stat` by every public colnn procedure (0 = success).
module colnn_status
  implicit none
  private

  integer, parameter, public :: COLNN_OK = 0
  integer, parameter, public :: COLNN_ERR_IO = 1          !< file missing, unreadable or unwritable
  integer, parameter, public :: COLNN_ERR_FORMAT = 2      !< malformed model file
  integer, parameter, public :: COLNN_ERR_ARGUMENT = 3    !< wrong shape, zero columns, bad handle
  integer, parameter, public :: COLNN_ERR_NONFINITE = 4   !< NaN or Inf in weights, inputs or outputs
  integer, parameter, public :: COLNN_ERR_UNSUPPORTED = 5 !< unknown layer type or activation
  integer, parameter, public :: COLNN_ERR_MEMORY = 6      !< allocation failed or size too large
  integer, parameter, public :: COLNN_ERR_NOT_IMPLEMENTED = 7

  public :: status_name

contains

  pure function status_name(stat) result(name)
    integer, intent(in) :: stat
    character(len=:), allocatable :: name
    select case (stat)
    case (COLNN_OK); name = 'ok'
    case (COLNN_ERR_IO); name = 'io error'
    case (COLNN_ERR_FORMAT); name = 'format error'
    case (COLNN_ERR_ARGUMENT); name = 'argument error'
    case (COLNN_ERR_NONFINITE); name = 'non-finite value'
    case (COLNN_ERR_UNSUPPORTED); name = 'unsupported'
    case (COLNN_ERR_MEMORY); name = 'memory error'
    case (COLNN_ERR_NOT_IMPLEMENTED); name = 'not implemented'
    case default; name = 'unknown status'
    end select
  end function status_name
end module colnn_status
