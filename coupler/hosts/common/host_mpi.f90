!> MPI for the toy hosts: halo exchange of a decomposed periodic direction, and gathering the
!> decomposed state on rank 0 so that every global sum is taken in one fixed order (results
!> are then bitwise identical for any number of ranks).
module host_mpi
  use, intrinsic :: iso_fortran_env, only: dp => real64
  use mpi_f08
  implicit none
  private

  public :: ring_exchange, gather_layout, gather_columns_dp, any_rank, bcast_int, bcast_str, &
            share_error

contains

  !> a(:, 1-hl : n+hr) holds this rank's n columns of a periodic direction and halos of hl
  !> (left) and hr (right) columns, which are filled from the neighbouring ranks (with one rank,
  !> from its own other end). Needs n >= max(hl, hr).
  subroutine ring_exchange(a, n, hl, hr, comm)
    integer, intent(in) :: n, hl, hr
    real(dp), intent(inout) :: a(:, 1 - hl:)
    type(MPI_Comm), intent(in) :: comm
    integer :: rank, nranks, left, right, m, ierr
    call MPI_Comm_rank(comm, rank, ierr)
    call MPI_Comm_size(comm, nranks, ierr)
    left = modulo(rank - 1, nranks)
    right = modulo(rank + 1, nranks)
    m = size(a, 1)
    if (nranks == 1) then
      if (hl > 0) a(:, 1 - hl:0) = a(:, n - hl + 1:n)
      if (hr > 0) a(:, n + 1:n + hr) = a(:, 1:hr)
      return
    end if
    if (hl > 0) call MPI_Sendrecv(a(:, n - hl + 1:n), m * hl, MPI_DOUBLE_PRECISION, right, 1, &
                                  a(:, 1 - hl:0), m * hl, MPI_DOUBLE_PRECISION, left, 1, &
                                  comm, MPI_STATUS_IGNORE, ierr)
    if (hr > 0) call MPI_Sendrecv(a(:, 1:hr), m * hr, MPI_DOUBLE_PRECISION, left, 2, &
                                  a(:, n + 1:n + hr), m * hr, MPI_DOUBLE_PRECISION, right, 2, &
                                  comm, MPI_STATUS_IGNORE, ierr)
  end subroutine ring_exchange

  !> counts/displs (allocated once, size = ranks) for gathering each rank's local(m, n_local).
  subroutine gather_layout(m, n_local, comm, counts, displs)
    integer, intent(in) :: m, n_local
    type(MPI_Comm), intent(in) :: comm
    integer, allocatable, intent(out) :: counts(:), displs(:)
    integer :: nranks, ierr, r
    call MPI_Comm_size(comm, nranks, ierr)
    allocate (counts(nranks), displs(nranks))
    call MPI_Allgather(m * n_local, 1, MPI_INTEGER, counts, 1, MPI_INTEGER, comm, ierr)
    displs(1) = 0
    do r = 2, nranks
      displs(r) = displs(r - 1) + counts(r - 1)
    end do
  end subroutine gather_layout

  !> g(:, 1:N) on rank 0 = the ranks' local(:, 1:n_r) in rank order (g untouched elsewhere).
  subroutine gather_columns_dp(local, g, counts, displs, comm)
    real(dp), intent(in) :: local(:, :)
    real(dp), intent(inout) :: g(:, :)
    integer, intent(in) :: counts(:), displs(:)
    type(MPI_Comm), intent(in) :: comm
    integer :: ierr
    if (size(counts) == 1) then
      g = local
      return
    end if
    call MPI_Gatherv(local, size(local), MPI_DOUBLE_PRECISION, g, counts, displs, &
                     MPI_DOUBLE_PRECISION, 0, comm, ierr)
  end subroutine gather_columns_dp

  !> True on every rank when flag is true on any rank.
  logical function any_rank(flag, comm)
    logical, intent(in) :: flag
    type(MPI_Comm), intent(in) :: comm
    integer :: ierr
    call MPI_Allreduce(flag, any_rank, 1, MPI_LOGICAL, MPI_LOR, comm, ierr)
  end function any_rank

  !> flag: this rank failed with msg. Returns whether any rank failed; msg then holds the
  !> message of the lowest failing rank on every rank.
  logical function share_error(flag, msg, comm)
    logical, intent(in) :: flag
    character(len=*), intent(inout) :: msg
    type(MPI_Comm), intent(in) :: comm
    integer :: rank, nranks, root, ierr
    call MPI_Comm_size(comm, nranks, ierr)
    if (nranks == 1) then   ! called at every RK stage: no collective when there is no one to ask
      share_error = flag
      return
    end if
    call MPI_Comm_rank(comm, rank, ierr)
    root = merge(rank, nranks, flag)
    call MPI_Allreduce(MPI_IN_PLACE, root, 1, MPI_INTEGER, MPI_MIN, comm, ierr)
    share_error = root < nranks
    if (share_error) call MPI_Bcast(msg, len(msg), MPI_CHARACTER, root, comm, ierr)
  end function share_error

  subroutine bcast_int(i, comm)
    integer, intent(inout) :: i
    type(MPI_Comm), intent(in) :: comm
    integer :: ierr
    call MPI_Bcast(i, 1, MPI_INTEGER, 0, comm, ierr)
  end subroutine bcast_int

  subroutine bcast_str(s, comm)
    character(len=*), intent(inout) :: s
    type(MPI_Comm), intent(in) :: comm
    integer :: ierr
    call MPI_Bcast(s, len(s), MPI_CHARACTER, 0, comm, ierr)
  end subroutine bcast_str
end module host_mpi
