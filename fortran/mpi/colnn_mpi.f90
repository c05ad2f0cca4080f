!> MPI helpers for hosts that spread their columns over ranks (mpi_f08). The library never
!> initialises or finalises MPI: the host owns MPI and passes its communicator.
module colnn_mpi
  use mpi_f08
  use colnn_kinds, only: wp, i8
  use colnn_status
  use colnn_strings, only: str
  implicit none
  private

  public :: decompose_columns, gather_columns

contains

  !> Contiguous, balanced split of n_global columns over the ranks of comm: this rank owns the
  !> columns first .. first + count - 1 (1-based; count may be 0 when ranks outnumber columns).
  subroutine decompose_columns(n_global, comm, first, count, stat, errmsg)
    integer, intent(in) :: n_global
    type(MPI_Comm), intent(in) :: comm
    integer, intent(out) :: first, count
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    integer :: rank, nranks, base, extra, ierr
    first = 1
    count = 0
    stat = COLNN_OK
    errmsg = ''
    if (n_global < 0) then
      stat = COLNN_ERR_ARGUMENT
      errmsg = 'decompose_columns: negative column count '//str(n_global)
      return
    end if
    call MPI_Comm_rank(comm, rank, ierr)
    if (ierr == MPI_SUCCESS) call MPI_Comm_size(comm, nranks, ierr)
    if (ierr /= MPI_SUCCESS) then
      stat = COLNN_ERR_ARGUMENT
      errmsg = 'decompose_columns: invalid communicator'
      return
    end if
    base = n_global / nranks
    extra = mod(n_global, nranks)
    count = base + merge(1, 0, rank < extra)
    first = rank * base + min(rank, extra) + 1
  end subroutine decompose_columns

  !> Gathers each rank's y_local(n, count) into y_global(n, n_global) on `root`, in rank order
  !> (the order decompose_columns gives).
  subroutine gather_columns(y_local, y_global, comm, root, stat, errmsg)
    real(wp), intent(in) :: y_local(:, :)
    real(wp), intent(inout) :: y_global(:, :)
    type(MPI_Comm), intent(in) :: comm
    integer, intent(in) :: root
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    integer :: nranks, rank, ierr, r
    integer, allocatable :: counts(:), displs(:)
    type(MPI_Datatype) :: rtype
    stat = COLNN_OK
    errmsg = ''
    rtype = MPI_REAL
    if (wp == kind(1.0d0)) rtype = MPI_DOUBLE_PRECISION
    call MPI_Comm_size(comm, nranks, ierr)
    call MPI_Comm_rank(comm, rank, ierr)
    allocate (counts(nranks), displs(nranks))
    call MPI_Gather(size(y_local), 1, MPI_INTEGER, counts, 1, MPI_INTEGER, root, comm, ierr)
    if (rank == root) then
      displs(1) = 0
      do r = 2, nranks
        displs(r) = displs(r - 1) + counts(r - 1)
      end do
      if (sum(counts) /= size(y_global)) then
        stat = COLNN_ERR_ARGUMENT
        errmsg = 'gather_columns: ranks hold '//str(sum(counts))//' values, y_global has '// &
                 str(size(y_global))
      end if
    end if
    call MPI_Bcast(stat, 1, MPI_INTEGER, root, comm, ierr)
    if (stat /= 0) then
      if (rank /= root) errmsg = 'gather_columns: size mismatch on the root'
      return
    end if
    call MPI_Gatherv(y_local, size(y_local), rtype, y_global, counts, displs, rtype, root, &
                     comm, ierr)
    if (ierr /= MPI_SUCCESS) then
      stat = COLNN_ERR_ARGUMENT
      errmsg = 'gather_columns: MPI_Gatherv failed'
    end if
  end subroutine gather_columns
end module colnn_mpi
