!> A GCM-style host: its state is double precision, held as (columns, levels) chunks as CCPP
!> and most GCMs hold it, whatever the precision of the colnn library it links. The chunks go to
!> the coupler as they are (columns_first=.true.): no transposed or converted copy on this side.
!> Like many GCMs it keeps a large work array as a local of a routine (here 24 MB): compiled
!> without -fopenmp, that lives in static memory; if a library's OpenMP flags leaked into the
!> host's build, it would move to the stack and overflow the usual 8 MB limit.
!> Usage: gcm_layout NAMELIST N_INPUTS N_OUTPUTS N_COLUMNS PCOLS; prints the outputs, a column
!> a line, in full double precision.
program gcm_layout
  use, intrinsic :: iso_fortran_env, only: real64
  use colnn_coupler, only: colnn_coupler_init, colnn_coupler_run, colnn_coupler_finalize
  use colnn_ccpp, only: colnn_ccpp_init, colnn_ccpp_run, colnn_ccpp_finalize
  implicit none
  character(len=1024) :: config, arg, errmsg
  integer :: n_in, n_out, ncol, pcols, errflg, i, j, j0, m
  real(real64), allocatable :: state(:, :), tend(:, :), tend_ccpp(:, :)

  if (command_argument_count() /= 5) then
    print '(a)', 'usage: gcm_layout NAMELIST N_INPUTS N_OUTPUTS N_COLUMNS PCOLS'
    stop 2
  end if
  call get_command_argument(1, config)
  call get_command_argument(2, arg); read (arg, *) n_in
  call get_command_argument(3, arg); read (arg, *) n_out
  call get_command_argument(4, arg); read (arg, *) ncol
  call get_command_argument(5, arg); read (arg, *) pcols
  call colnn_coupler_init(trim(config), n_in, n_out, errmsg, errflg)
  if (errflg /= 0) then
    print '(a)', 'init failed: '//trim(errmsg)
    stop 1
  end if
  allocate (state(ncol, n_in), tend(ncol, n_out), tend_ccpp(ncol, n_out))
  call dynamics_work()
  do i = 1, n_in
    do j = 1, ncol
      state(j, i) = 0.01_real64 * mod((i - 1) * 7 + (j - 1) * 3, 23) - 0.1_real64
    end do
  end do
  do j0 = 1, ncol, pcols
    m = min(pcols, ncol - j0 + 1)
    call colnn_coupler_run(state(j0:j0 + m - 1, :), tend(j0:j0 + m - 1, :), errmsg, errflg, &
                           column_offset=j0 - 1, step=1, columns_first=.true.)
    if (errflg /= 0) then
      print '(a)', 'run failed: '//trim(errmsg)
      stop 1
    end if
  end do
  ! a chunk of the wrong shape: an error that names what was expected
  call colnn_coupler_run(state(1:3, 1:n_in - 1), tend(1:3, :), errmsg, errflg, &
                         columns_first=.true.)
  print '(a,i0,a)', 'bad shape -> ', errflg, ': '//trim(errmsg)
  call colnn_coupler_finalize(errmsg, errflg)
  ! the same step through the CCPP scheme, as capgen would call it for each chunk (by keyword:
  ! the optional closure arguments stand before errmsg and errflg, which CCPP wants last)
  call colnn_ccpp_init(trim(config), n_in, n_out, errmsg=errmsg, errflg=errflg)
  if (errflg /= 0) then
    print '(a)', 'ccpp init failed: '//trim(errmsg)
    stop 1
  end if
  do j0 = 1, ncol, pcols
    m = min(pcols, ncol - j0 + 1)
    call colnn_ccpp_run(j0, 1, state(j0:j0 + m - 1, :), tend_ccpp(j0:j0 + m - 1, :), &
                        errmsg=errmsg, errflg=errflg)
    if (errflg /= 0) then
      print '(a)', 'ccpp run failed: '//trim(errmsg)
      stop 1
    end if
  end do
  call colnn_ccpp_finalize(errmsg, errflg)
  print '(a,l1)', 'ccpp scheme gives the same bits: ', all(tend_ccpp == tend)
  do j = 1, ncol
    print '(*(es25.17,1x))', tend(j, :)
  end do
contains
  !> A stand-in for a GCM routine with a large local work array.
  subroutine dynamics_work()
    real(real64) :: work(3000, 1000)
    integer :: k
    do k = 1, size(work, 2)
      work(:, k) = k
    end do
    if (sum(work(1, :)) <= 0) print '(a)', 'unreachable'
  end subroutine dynamics_work
end program gcm_layout
